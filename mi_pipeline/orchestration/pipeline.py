"""Carry out a plan: clear a run for *fresh*, record skipped steps, hand the steps to an executor.

The ``submit`` command decides the mode (flag or the seed's menu) and prints; everything that
changes the run directory or starts work is here, so the sbatch wrappers' helper and tests use the
same steps.
"""

from __future__ import annotations

import shutil

from mi_pipeline.config import Config
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.local_executor import StageCommand, run_local
from mi_pipeline.orchestration.plan import Step
from mi_pipeline.orchestration.progress import Progress, ProgressFile


def cancel_in_flight(progress: Progress, progress_file: ProgressFile) -> list[str]:
    """scancel the run's live SLURM jobs (mode fresh); the ids cancelled."""
    if not any(r.executor == "slurm" and r.job_id for r in progress.stages.values()):
        return []
    from mi_pipeline.orchestration.slurm_executor import cancel_jobs

    return cancel_jobs(progress_file, "mode fresh")


def delete_for_fresh(layout: RunLayout, progress_file: ProgressFile) -> None:
    """Delete exactly the seed's list (``RunLayout.fresh_targets``) and reset the record."""
    for path in layout.fresh_targets():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.name != progress_file.path.name and (path.is_file() or path.is_symlink()):
            path.unlink()
    progress_file.reset()


def record_skips(steps: list[Step], progress_file: ProgressFile) -> None:
    """A skipped step is done as far as the record goes, with the reason it was skipped."""
    with progress_file.update() as progress:
        for step in steps:
            record = progress.stages[step.stage]
            if not step.run and record.status != "done":
                record.status, record.note = "done", f"skipped: {step.reason}"


def execute(steps: list[Step], command: StageCommand, progress_file: ProgressFile, cfg: Config,
            executor: str) -> int:
    """Run (local) or submit (slurm) the steps that run; the exit status for the command."""
    record_skips(steps, progress_file)
    if executor == "slurm":
        from mi_pipeline.orchestration.slurm_executor import run_slurm

        return run_slurm(steps, command, progress_file, cfg)
    return run_local(steps, command, progress_file)
