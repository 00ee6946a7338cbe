"""Submit the plan as SLURM jobs through submitit: afterok dependencies, automatic requeue.

Each stage job runs :class:`StageJob`, which trains in the job's own Python process. On USR2
(SLURM's pre-timeout / preemption signal, which submitit asks for) the training loop saves its exact
position; then submitit's own handler requeues the job, and the requeued job continues from
``last.pth`` with no user action. Jobs already pending or running are never submitted twice.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from mi_pipeline.config import Config, load_config
from mi_pipeline.errors import UserError
from mi_pipeline.graph import upstream
from mi_pipeline.orchestration import jobs
from mi_pipeline.orchestration.container import python_command
from mi_pipeline.orchestration.local_executor import StageCommand, plan_restart
from mi_pipeline.orchestration.plan import Step, keep_live_jobs
from mi_pipeline.orchestration.private import owner_only
from mi_pipeline.orchestration.progress import ProgressFile


@dataclass(frozen=True)
class StageJob:
    """The callable a stage job runs (small and picklable: all state lives in the run directory)."""

    stage: str
    command: StageCommand
    restart: bool = False  # only in jobs pickled by 0.1.0; now a planned restart travels as restart_token
    restart_token: str | None = None

    def __call__(self) -> int:
        from mi_pipeline.layout import RunLayout
        from mi_pipeline.orchestration.stage_runner import (
            EXIT_INTERRUPTED,
            StopFlag,
            train_stage,
        )

        cfg = load_config(self.command.config, self.command.overrides)
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # one task per GPU: export RANK, WORLD_SIZE, ...
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        stop = StopFlag()
        # A 0.1.0 job with restart=True restarts on its first run only, never on a requeue.
        legacy_restart = self.restart and int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) == 0
        returncode = train_stage(self.stage, cfg, RunLayout(self.command.run_dir), force=self.command.force,
                                 restart=legacy_restart, restart_token=getattr(self, "restart_token", None),
                                 on_upstream_change="restart", stop=stop, interrupted_status="pending")
        if returncode == EXIT_INTERRUPTED:
            if int(os.environ.get("RANK", "0")) != 0:
                return returncode  # rank 0 saves and requeues the whole job
            if stop.signal_name == "SIGUSR2" and callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)  # calls self.checkpoint(), requeues, exits
            sys.exit(-1)  # SIGTERM: SLURM itself requeues (preemption, scontrol requeue) or ends the job
        if returncode != 0:
            raise RuntimeError(f"stage {self.stage} failed (exit status {returncode}); "
                               f"see {self.command.run_dir / 'logs' / self.stage / 'train.log'}")
        return returncode

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on USR2: the files already hold the state; requeue a fresh, small callable."""
        import submitit

        cfg = load_config(self.command.config, self.command.overrides)
        from mi_pipeline.layout import RunLayout

        progress = ProgressFile.for_run(RunLayout(self.command.run_dir))
        with progress.update() as record:
            stage = record.stages[self.stage]
            stage.requeues += 1
            over = stage.requeues > cfg.slurm.max_requeues
            stage.status = "failed" if over else "pending"
            stage.error = f"requeued {stage.requeues} times, over slurm.max_requeues={cfg.slurm.max_requeues}" if over else None
        if over:
            return None  # submitit then ends the job as failed
        return submitit.helpers.DelayedSubmission(replace(self, restart=False))  # the token stays: it is used up


@dataclass
class SubmitBatch:
    """The jobs one command submitted, across several ``run_slurm`` calls (a K-fold run's folds).

    Submission is all or nothing for the whole command: a refusal cancels every job in the batch and
    resets the records that named them.
    """

    submitted: list[str] = field(default_factory=list)
    records: list[ProgressFile] = field(default_factory=list)


def run_slurm(steps: list[Step], command: StageCommand, progress: ProgressFile, cfg: Config, *,
              batch: SubmitBatch | None = None, upstream_jobs: dict[str, str] | None = None) -> dict[str, str]:
    """Submit every planned stage not already in flight; print what was submitted and what was kept.

    All or nothing: requests are checked against the cluster's partitions first, and when sbatch
    refuses a stage the jobs this call (or ``batch``) already submitted are cancelled and the record
    says why. ``upstream_jobs`` are jobs of stages planned elsewhere (a K-fold run's shared data job)
    that these stages wait on. Returns stage -> job id of the jobs the stages now wait on or run as.
    """
    import submitit

    from mi_pipeline.layout import RunLayout
    from mi_pipeline.orchestration.slurm_resources import (
        check_resources,
        cluster_partitions,
    )

    batch = batch if batch is not None else SubmitBatch()
    new_upstream = [stage for stage, job_id in (upstream_jobs or {}).items() if job_id in batch.submitted]
    kept_upstream = {stage: job_id for stage, job_id in (upstream_jobs or {}).items() if stage not in new_upstream}
    kept, stale = live_jobs(steps, progress, new_upstream, kept_upstream)
    # none left when the executor cancelled them first, unless SLURM let an upstream job go since then
    say_cancelled(jobs.cancel_stale(progress, stale, STALE, CANCEL_WAIT_S))
    to_submit = [s for s in steps if s.run and s.stage not in kept]
    # Inside the image when a container is configured; the image, then the resources, are checked
    # before anything is submitted. A fold binds the whole run (its data/cache links to the top's).
    slurm_python = python_command(cfg, RunLayout(command.run_dir).top.root,
                                  [command.config.parent] if command.config else [])
    check_resources(cfg, [s.stage for s in to_submit], cluster_partitions())
    job_of: dict[str, str] = dict(upstream_jobs or {})
    omitted = tuple(s.stage for s in steps if s.left_out)  # the data cannot feed them: nothing to wait on
    batch.records.append(progress)
    folder = job_folder(command.run_dir, cfg)
    for step in steps:
        if not step.run:
            continue
        if step not in to_submit:
            job_of[step.stage], state = kept[step.stage]
            print(f"  {step.stage}: job {job_of[step.stage]} is {state}: kept (no duplicate submitted)")
            continue
        deps = [job_of[up] for up in upstream(step.stage, omitted) if up in job_of]
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=cfg.slurm.max_requeues,
                                         slurm_python=slurm_python)
        executor.update_parameters(**slurm_parameters(cfg, step.stage, command.run_dir, deps))
        try:
            # submitit prints sbatch's refusal too: say it once; the pickle it writes is the owner's alone
            with contextlib.redirect_stderr(io.StringIO()), owner_only(folder.parent):
                job = executor.submit(StageJob(step.stage, command, restart_token=plan_restart(step, progress)))
        except (subprocess.SubprocessError, OSError, submitit.core.utils.FailedJobError) as exc:
            _abandon(step.stage, batch, progress, _sbatch_reason(exc))
        job_of[step.stage] = job.job_id
        batch.submitted.append(job.job_id)
        progress.update_stage(step.stage, status="pending", executor="slurm", job_id=job.job_id, error=None,
                              note=f"submitted{' after ' + ','.join(deps) if deps else ''}")
        print(f"  {step.stage}: submitted job {job.job_id}" + (f" (afterok:{':'.join(deps)})" if deps else ""))
    print(f"jobs: {' '.join(f'{s}={j}' for s, j in job_of.items() if s not in (upstream_jobs or {})) or 'none'}; "
          f"follow with: python -m mi_pipeline.status --run-dir {RunLayout(command.run_dir).top.root}")
    return job_of


STALE = "an upstream stage runs again: it would train on files being rebuilt"
CANCEL_WAIT_S = 300.0  # how long a submission waits for cancelled stale jobs to save and end


def live_jobs(steps: list[Step], progress: ProgressFile, new_upstream: Collection[str] = (),
              upstream_live: Mapping[str, str] | None = None) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """(kept: stage -> (job id, SLURM state), stale: stage -> job id) for ``steps`` as SLURM sees them
    now (``plan.keep_live_jobs``; ``new_upstream``: stages planned elsewhere that get a new job,
    ``upstream_live``: their live jobs that are kept).

    A job whose stage the record already calls done is ending, not live: kept, it would let the
    stages after it start on what this plan found missing."""
    records = progress.read().stages
    states = jobs.slurm_states_of([records[s.stage] for s in steps if s.run])
    live = {s.stage: records[s.stage].job_id or "" for s in steps
            if s.run and records[s.stage].status != "done" and jobs.job_active(records[s.stage], states)}
    kept, stale = keep_live_jobs(steps, live, new_upstream, upstream_live)
    return {stage: (job_id, states[job_id]) for stage, job_id in kept.items()}, stale


def say_cancelled(job_ids: list[str]) -> None:
    if job_ids:
        print(f"cancelled stale jobs ({STALE}), and waited until they ended: {' '.join(job_ids)}")


def cancel_stale_jobs(units: list[tuple[list[Step], ProgressFile]]) -> list[str]:
    """Before anything is submitted: cancel, and wait for, every live job that ``live_jobs`` calls stale.

    ``units``: the run's (or the top's) steps first, then each fold's, whose stages wait on the top's
    data job: new when the top's data step runs without a live job to keep.
    """
    (top_steps, top_progress), *folds = units
    kept, stale = live_jobs(top_steps, top_progress)
    cancelled = jobs.cancel_stale(top_progress, stale, STALE, CANCEL_WAIT_S)
    data_new = any(s.stage == "data" and s.run for s in top_steps) and "data" not in kept
    data_kept = {"data": kept["data"][0]} if "data" in kept else {}
    for steps, progress in folds:
        cancelled += jobs.cancel_stale(progress, live_jobs(steps, progress, ("data",) if data_new else (), data_kept)[1],
                                       STALE, CANCEL_WAIT_S)
    return cancelled


def job_folder(run_dir: Path, cfg: Config) -> Path:
    """submitit's folder pattern for a run's jobs (``<job_dir>/%j``); a ``%`` in the run's path is
    refused, as SLURM would read it as a pattern in the jobs' ``--output``."""
    from mi_pipeline.layout import RunLayout

    root = RunLayout(run_dir).job_dir(cfg.slurm.job_dir)
    if "%" in str(root):
        raise UserError(f"{root}: SLURM reads a '%' in a job's output path as a pattern; use a run directory "
                        f"whose path has no '%'")
    return root / "%j"


def _sbatch_reason(exc: BaseException) -> str:
    """sbatch's own words from a refused submission (submitit wraps them in a long message)."""
    text = "\n".join(str(part) for part in (getattr(exc, "stderr", None), getattr(exc, "output", None), exc) if part)
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower() and line.strip()]
    return (lines[0] if lines else text.strip().splitlines()[-1] if text.strip() else type(exc).__name__)[:300]


def _abandon(stage: str, batch: SubmitBatch, progress: ProgressFile, reason: str) -> NoReturn:
    """sbatch refused ``stage``: cancel what this command submitted, record why, stop with one line."""
    submitted = batch.submitted
    if submitted:
        subprocess.run(["scancel", *submitted], check=False, timeout=60)
    for touched in dict.fromkeys(batch.records):
        for other, record in touched.read().stages.items():
            if record.executor == "slurm" and record.job_id in submitted:
                touched.update_stage(other, status="not_started", job_id=None,
                                     note=f"job {record.job_id} cancelled: sbatch refused {stage}")
    progress.update_stage(stage, status="failed", error=f"sbatch refused the {stage} job: {reason}")
    cancelled = f"; cancelled the jobs this call had submitted ({' '.join(submitted)})" if submitted else ""
    raise UserError(f"sbatch refused the {stage} job: {reason}{cancelled}; fix the slurm section and submit again")


def slurm_parameters(cfg: Config, stage: str, run_dir: Path, deps: list[str]) -> dict[str, Any]:
    """submitit parameters for one stage's job (submitit writes the sbatch script from these)."""
    res = cfg.slurm.for_stage(stage)
    from mi_pipeline.layout import RunLayout

    fold = RunLayout(run_dir).fold_index
    label = run_dir.name if fold is None else f"{run_dir.parent.parent.name}_f{fold}"
    params: dict[str, Any] = {
        "name": f"mi_{label}_{stage}",
        "timeout_min": res["time_min"],
        "nodes": res["nodes"],
        "tasks_per_node": res["tasks_per_node"] or max(1, res["gpus_per_node"]),
        "cpus_per_task": res["cpus_per_task"],
        "mem_gb": res["mem_gb"],
        "slurm_signal_delay_s": cfg.slurm.signal_delay_s,
        "slurm_setup": list(cfg.slurm.setup),
    }
    if res["gpus_per_node"]:
        params["gpus_per_node"] = res["gpus_per_node"]
    for key in ("partition", "account", "qos", "constraint"):
        if res[key]:
            params[f"slurm_{key}"] = res[key]
    extra: dict[str, Any] = {"requeue": True}  # sites whose default is --no-requeue would refuse the requeue
    for item in cfg.slurm.extra:
        key, _, value = item.partition("=")
        extra[key] = value
    if deps:
        extra["dependency"] = "afterok:" + ":".join(deps)
        extra["kill-on-invalid-dep"] = "yes"
    params["slurm_additional_parameters"] = extra
    return params
