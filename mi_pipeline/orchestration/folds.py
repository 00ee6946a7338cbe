"""k-fold cross-validation runs (issue 15): one shared data stage, then K independent fold runs.

Each fold is a run directory of its own (``fold_setup``), so it is planned by the same
``plan.make_plan``, run by the same executors and stage runner, requeued and resumed under the same
rules as a run without folds; this module only adds what is shared: the one data step at the top,
and submitting every fold in one command.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mi_pipeline.config import Config
from mi_pipeline.data.prepare import data_is_prepared
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.fold_setup import SHARED_DATA, fold_layouts, prepare_folds
from mi_pipeline.orchestration.local_executor import StageCommand, run_local
from mi_pipeline.orchestration.pipeline import record_skips
from mi_pipeline.orchestration.plan import Step, make_plan
from mi_pipeline.orchestration.progress import Progress, ProgressFile


@dataclass(frozen=True)
class FoldsPlan:
    """What a K-fold submission does: the one data step at the top, then each fold's own plan."""

    data: Step
    folds: dict[int, list[Step]]

    def describe(self) -> list[str]:
        lines = [f"top     {self.data.describe()}"]
        for k, steps in self.folds.items():
            lines += [f"fold {k:<2} {step.describe()}" for step in steps if step.stage != "data"]
        return lines

    @property
    def undecided(self) -> list[tuple[int, Step]]:
        return [(k, s) for k, steps in self.folds.items() for s in steps if s.decide]


def plan_folds(mode: str, cfg: Config, top: RunLayout, top_progress: Progress, data_ready: bool, *,
               retrain_from: str | None = None, force: bool = False, only: int | None = None) -> FoldsPlan:
    """``make_plan`` for the top's data step, then for every fold (or fold ``only``) on its own record.

    A fold whose data is not ready (data reruns, or the fold folder is not made yet) plans its model
    stages as dependants of a running data step, exactly as a run without folds would.
    """
    data_mode = "resume" if only is not None and mode == "fresh" else mode  # fresh for one fold keeps the data
    data = make_plan(data_mode, top, top_progress, data_ready=data_ready)[0]
    plans: dict[int, list[Step]] = {}
    for k, fold in enumerate(fold_layouts(cfg, top)):
        if only is not None and k != only:
            continue
        fold_ready = not data.run and data_is_prepared(cfg, fold.root)
        steps = make_plan(mode, fold, ProgressFile.for_run(fold).read(), data_ready=fold_ready, cfg=cfg,
                          retrain_from=retrain_from, force=force)
        plans[k] = [Step("data", False, SHARED_DATA), *steps[1:]]
    return FoldsPlan(data, plans)


def execute_folds(plan: FoldsPlan, command: StageCommand, cfg: Config, executor: str) -> int:
    """Run (local) or submit (slurm) the data step, then every fold's steps; the exit status.

    Locally the folds run one after another; a failed fold is reported and the others still run.
    On SLURM every fold's jobs are submitted in this one call, each fold's first stages waiting on the
    one data job (``afterok``), so the scheduler runs the folds side by side. All or nothing: when
    sbatch refuses any job, every job this call submitted is cancelled (``slurm_executor.run_slurm``).
    """
    top = RunLayout(command.run_dir)
    top_progress = ProgressFile.for_run(top)
    record_skips([plan.data], top_progress)
    for k, steps in plan.folds.items():
        record_skips(steps[1:], ProgressFile.for_run(top.fold(k)))
    if executor == "slurm":
        return _submit_folds(plan, command, cfg, top, top_progress)
    if plan.data.run:
        returncode = run_local([plan.data], command, top_progress)
        if returncode != 0:
            return returncode
    if any(s.run for steps in plan.folds.values() for s in steps):
        prepare_folds(cfg, top)
    failed = 0
    for k, steps in plan.folds.items():
        if any(s.run for s in steps):
            print(f"==> fold {k}", flush=True)
            returncode = run_local(steps, replace(command, run_dir=top.fold(k).root), ProgressFile.for_run(top.fold(k)))
            failed = failed or returncode
    return failed


def _submit_folds(plan: FoldsPlan, command: StageCommand, cfg: Config, top: RunLayout,
                  top_progress: ProgressFile) -> int:
    from mi_pipeline.orchestration.slurm_executor import SubmitBatch, run_slurm

    batch = SubmitBatch()
    jobs = run_slurm([plan.data], command, top_progress, cfg, batch=batch)
    upstream = {"data": jobs["data"]} if "data" in jobs else {}  # no data job: submit made the folds already
    for k, steps in plan.folds.items():
        fold = top.fold(k)
        fold.root.mkdir(parents=True, exist_ok=True)
        print(f"fold {k}:")
        run_slurm(steps, replace(command, run_dir=fold.root), ProgressFile.for_run(fold), cfg, batch=batch,
                  upstream_jobs=upstream)
    return 0
