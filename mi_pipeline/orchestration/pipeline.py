"""What a submission does to a run's files before its steps start: stop in-flight stages and clear
the seed's list for mode *fresh*, record the skipped steps (``orchestration/submission.py`` calls these).
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from mi_pipeline.errors import UserError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.jobs import cancel_jobs, jobs_in_folder, process_alive, wait_until_gone
from mi_pipeline.orchestration.plan import Step
from mi_pipeline.orchestration.progress import Progress, ProgressFile

CANCEL_WAIT_S = 300.0  # how long fresh waits for cancelled jobs to finish saving and end


def stop_in_flight(progress: Progress, progress_file: ProgressFile, job_dir: Path,
                   wait_s: float = CANCEL_WAIT_S) -> list[str]:
    """Before mode fresh deletes anything: no stage of the run may still be running.

    SLURM jobs are cancelled and waited for until SLURM says they are gone (a cancelled stage saves
    its position on SIGTERM; were fresh to delete first, that write would land in the new run). A
    stage running as a local process is not ours to kill: that is an error naming it. Returns the
    job ids cancelled.
    """

    for stage, record in progress.stages.items():
        if (record.executor == "local" and record.status == "running" and record.pid
                and record.host == socket.gethostname() and process_alive(record)):
            raise UserError(f"{stage} is running in process {record.pid} on {record.host}; mode fresh would delete "
                            f"its files under it: stop it first (kill -TERM {record.pid}), then run fresh again")
    if not any(r.executor == "slurm" and r.job_id for r in progress.stages.values()) and not jobs_in_folder(job_dir):
        return []
    cancelled = cancel_jobs(progress_file, "mode fresh", job_dir)
    live = wait_until_gone(cancelled, wait_s)
    if live:
        raise UserError(f"jobs {' '.join(live)} were cancelled but are still running after {wait_s:.0f} s; nothing "
                        f"was deleted: run fresh again once squeue no longer lists them")
    return cancelled


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
