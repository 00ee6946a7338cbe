"""What the plain sbatch wrappers (``slurm/``) ask Python, so the shell carries no rules of its own.

``submit_chain.sh`` asks for the plan (which stages to run, keep or skip, and what each waits on)
and records the job ids it submitted; ``run_stage.sbatch`` records a stage's state and asks whether
a job that saved its position may be requeued (``slurm.max_requeues``). The answers come from the
same plan, record, stage graph and job states as ``python -m mi_pipeline.submit``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mi_pipeline.config import Config
from mi_pipeline.errors import UserError
from mi_pipeline.graph import upstream
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.plan import Step
from mi_pipeline.orchestration.progress import ProgressFile, now


def _progress_file(root: Path) -> ProgressFile:
    return ProgressFile.for_run(RunLayout(root))


def plan_lines(cfg: Config, root: Path, fold: int | None = None) -> list[str]:
    """One line per stage, in pipeline order, for the shell to act on:

    ``skip STAGE reason`` | ``keep STAGE JOB_ID STATE`` (its live job stays the stage's job) |
    ``run STAGE RESTART_TOKEN(or -) UPSTREAM(comma-separated stages, or -) reason``.

    A planned restart is recorded here with its token (``local_executor.plan_restart``); the job
    passes the token on, so a requeued job continues instead of restarting again.

    A k-fold run (``cv.folds``): without ``fold`` the chain is the shared data stage alone (the
    models train in the folds); with ``fold`` it is that fold's model stages, waiting on the data
    job when it is still queued (a ``keep data`` line), never submitting data themselves; a fold job
    queued before that data job (an earlier chain's, which never waits on it) is cancelled and run again.
    """
    from mi_pipeline.data.cache import cine_labels_available, data_is_prepared, lge_available
    from mi_pipeline.orchestration.plan import make_plan

    top = RunLayout(root)
    if fold is not None or cfg.cv.folds:
        from mi_pipeline.orchestration.fold_setup import check_fold

        check_fold(fold, cfg.cv.folds, f"{root} (cv.folds={cfg.cv.folds})")
    top_file = _progress_file(root)
    lge, labels = lge_available(cfg, root), cine_labels_available(cfg, root)
    top_steps = make_plan("resume", top, top_file.read(), data_ready=data_is_prepared(cfg, root), lge=lge,
                          cine_labels=labels)
    if fold is None:
        if not cfg.cv.folds:
            return [str(line) for line in _entries(top_steps, top_file)]
        return [str(_entries(top_steps[:1], top_file)[0])] + [
            f"skip {s.stage} k-fold run: models train in folds/<k> (submit_chain.sh --fold k)" for s in top_steps[1:]]
    data = _entries(top_steps[:1], top_file)[0]
    if data.verb == "run":
        raise UserError(f"fold {fold} needs the shared data stage, which is not prepared and not queued: submit it "
                        f"first (slurm/submit_chain.sh CONFIG {root}), then the folds")
    if data.verb == "skip":
        from mi_pipeline.orchestration.fold_setup import SHARED_DATA, prepare_folds

        prepare_folds(cfg, top)
        data = ChainLine("skip", "data", (SHARED_DATA,))
    layout = top.fold(fold)
    layout.root.mkdir(parents=True, exist_ok=True)
    fold_file = _progress_file(layout.root)
    steps = make_plan("resume", layout, fold_file.read(), data_ready=data_is_prepared(cfg, layout.root), lge=lge,
                      cine_labels=labels)
    data_job = {"data": data.fields[0]} if data.verb == "keep" else {}  # queued or running: ours must follow it
    return [str(line) for line in (data, *_entries(steps[1:], fold_file, data_job))]


@dataclass(frozen=True)
class ChainLine:
    """One stage's answer to the wrapper: ``verb stage fields...`` when printed."""

    verb: Literal["skip", "keep", "run"]
    stage: str
    fields: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join((self.verb, self.stage, *self.fields))


def _entries(steps: list[Step], progress_file: ProgressFile, upstream_live: dict[str, str] | None = None
             ) -> list[ChainLine]:
    """The lines for ``steps``; ``upstream_live``: live jobs of stages planned elsewhere that these wait on
    (a fold's view of the top's data job): a job of ours submitted before one of them is stale."""
    from mi_pipeline.orchestration.jobs import cancel_stale
    from mi_pipeline.orchestration.local_executor import plan_restart
    from mi_pipeline.orchestration.slurm_executor import CANCEL_WAIT_S, STALE, live_jobs

    kept, stale = live_jobs(steps, progress_file, upstream_live=upstream_live)
    cancel_stale(progress_file, stale, STALE, CANCEL_WAIT_S)  # a live job whose upstream reruns: replaced
    lines = []
    omitted = tuple(s.stage for s in steps if s.left_out)  # no job to wait on
    for step in steps:
        if not step.run:
            lines.append(ChainLine("skip", step.stage, (step.reason,)))
        elif step.stage in kept:
            lines.append(ChainLine("keep", step.stage, kept[step.stage]))
        else:
            ups = ",".join(upstream(step.stage, omitted)) or "-"
            token = plan_restart(step, progress_file) or "-"
            lines.append(ChainLine("run", step.stage, (token, ups, step.reason)))
    return lines


def record_jobs(root: Path, note: str, jobs: dict[str, str]) -> None:
    """The wrapper submitted these jobs (stage -> job id): they are now the stages' pending jobs."""
    with _progress_file(root).update() as record:
        for stage, job_id in jobs.items():
            entry = record.stages[stage]
            entry.status, entry.executor, entry.job_id, entry.error, entry.note, entry.updated = (
                "pending", "slurm", job_id, None, note, now())


def record_stage(root: Path, stage: str, changes: dict[str, str | None]) -> None:
    _progress_file(root).update_stage(stage, **changes)


def requeue_allowed(root: Path, stage: str, max_requeues: int) -> tuple[bool, str]:
    """After a job saved its position on USR2: may it be requeued? Records the answer first.

    Recording comes first because once requeued, the next run may start (and write "running") at once.
    """
    job_id = os.environ.get("SLURM_JOB_ID", "?")
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if restarts >= max_requeues:
        message = (f"job {job_id} requeued {restarts} times (slurm.max_requeues={max_requeues}); "
                   f"resume continues from last.pth")
        record_stage(root, stage, {"status": "failed", "error": message})
        return False, message
    record_stage(root, stage, {"status": "pending", "error": None,
                               "note": "requeued by slurm/run_stage.sbatch after USR2; continues from last.pth"})
    return True, f"requeue {restarts + 1} of at most {max_requeues}"
