"""Submit the plan as SLURM jobs through submitit: afterok dependencies, automatic requeue.

Each stage job runs :class:`StageJob`, which trains in the job's own Python process. On USR2
(SLURM's pre-timeout / preemption signal, which submitit asks for) the training loop saves its exact
position; then submitit's own handler requeues the job, and the requeued job continues from
``last.pth`` with no user action. Jobs already pending or running are never submitted twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mi_pipeline.config import Config, load_config
from mi_pipeline.orchestration.container import python_command
from mi_pipeline.orchestration.local_executor import StageCommand
from mi_pipeline.orchestration.plan import Step
from mi_pipeline.orchestration.progress import ProgressFile
from mi_pipeline.stages.graph import UPSTREAM

ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


@dataclass(frozen=True)
class StageJob:
    """The callable a stage job runs (small and picklable: all state lives in the run directory)."""

    stage: str
    command: StageCommand
    restart: bool = False

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
        returncode = train_stage(self.stage, cfg, RunLayout(self.command.run_dir), force=self.command.force,
                                 restart=self.restart, on_upstream_change="restart", stop=stop,
                                 interrupted_status="pending")
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
        progress = ProgressFile(self.command.run_dir)
        with progress.update() as record:
            stage = record.stages[self.stage]
            stage.requeues += 1
            over = stage.requeues > cfg.slurm.max_requeues
            stage.status = "failed" if over else "pending"
            stage.error = f"requeued {stage.requeues} times, over slurm.max_requeues={cfg.slurm.max_requeues}" if over else None
        if over:
            return None  # submitit then ends the job as failed
        return submitit.helpers.DelayedSubmission(replace(self, restart=False))


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job id (sacct, which also knows finished jobs; squeue as a fallback)."""
    ids = [j for j in job_ids if j]
    if not ids:
        return {}
    states: dict[str, str] = {}
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o", "JobID,State"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        for line in out.splitlines():
            job_id, _, state = line.partition("|")
            if job_id in ids and state:
                states[job_id] = state.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    missing = [j for j in ids if j not in states]
    if missing:
        try:
            out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(missing)],
                                 capture_output=True, text=True, timeout=60).stdout
            for line in out.splitlines():
                job_id, _, state = line.strip().partition(" ")
                states[job_id] = state
        except (OSError, subprocess.SubprocessError):
            pass
    return states


def run_slurm(steps: list[Step], command: StageCommand, progress: ProgressFile, cfg: Config) -> int:
    """Submit every planned stage not already in flight; print what was submitted and what was kept."""
    import submitit

    records = progress.read().stages
    live = job_states([records[s.stage].job_id or "" for s in steps if records[s.stage].executor == "slurm"])
    job_of: dict[str, str] = {}
    folder = command.run_dir / cfg.slurm.job_dir / "%j"
    # Inside the image when a container is configured; checked before anything is submitted.
    slurm_python = python_command(cfg, command.run_dir, [command.config.parent] if command.config else [])
    for step in steps:
        if not step.run:
            continue
        record = records[step.stage]
        state = live.get(record.job_id or "")
        if record.executor == "slurm" and state in ACTIVE_STATES:
            job_of[step.stage] = record.job_id  # type: ignore[assignment]
            print(f"  {step.stage}: job {record.job_id} is {state}: kept (no duplicate submitted)")
            continue
        deps = [job_of[up] for up in UPSTREAM[step.stage] if up in job_of]
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=cfg.slurm.max_requeues,
                                         slurm_python=slurm_python)
        executor.update_parameters(**slurm_parameters(cfg, step.stage, command.run_dir, deps))
        job = executor.submit(StageJob(step.stage, command, restart=step.restart))
        job_of[step.stage] = job.job_id
        progress.update_stage(step.stage, status="pending", executor="slurm", job_id=job.job_id, error=None,
                              note=f"submitted{' after ' + ','.join(deps) if deps else ''}")
        print(f"  {step.stage}: submitted job {job.job_id}" + (f" (afterok:{':'.join(deps)})" if deps else ""))
    print(f"jobs: {' '.join(f'{s}={j}' for s, j in job_of.items()) or 'none'}; "
          f"follow with: python -m mi_pipeline.status --run-dir {command.run_dir}")
    return 0


def slurm_parameters(cfg: Config, stage: str, run_dir: Path, deps: list[str]) -> dict[str, Any]:
    """submitit parameters for one stage's job (submitit writes the sbatch script from these)."""
    res = cfg.slurm.for_stage(stage)
    params: dict[str, Any] = {
        "name": f"mi_{run_dir.name}_{stage}",
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
    extra.update(item.split("=", 1) for item in cfg.slurm.extra)
    if deps:
        extra["dependency"] = "afterok:" + ":".join(deps)
        extra["kill-on-invalid-dep"] = "yes"
    params["slurm_additional_parameters"] = extra
    return params


def cancel_jobs(progress: ProgressFile, why: str) -> list[str]:
    """scancel the run's jobs that are still pending or running; record it."""
    records = progress.read().stages
    ids = {s: r.job_id for s, r in records.items() if r.executor == "slurm" and r.job_id}
    states = job_states(list(ids.values()))
    active = {s: j for s, j in ids.items() if states.get(j) in ACTIVE_STATES}
    if active:
        subprocess.run(["scancel", *active.values()], check=False, timeout=60)
        for stage, job_id in active.items():
            progress.update_stage(stage, status="failed", error=f"job {job_id} cancelled ({why})")
    return list(active.values())
