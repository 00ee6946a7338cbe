"""Is the process or SLURM job a record names still alive? The one place that asks the world.

``status``, the stage lease, ``submit`` (keep a live job, refuse a duplicate trainer), ``cancel``,
mode fresh and the sbatch wrappers' helper all ask here, so "live" means one thing everywhere.
SLURM is asked with ``sacct`` (which also knows finished jobs) and ``squeue`` as a fallback; no
submitit or torch import, so the commands that ask stay quick.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

from mi_pipeline.errors import UserError
from mi_pipeline.orchestration.progress import ProgressFile
from mi_pipeline.orchestration.records import StageRecord

ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                           "COMPLETING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED"})


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


def queued_jobs() -> set[str]:
    """Ids of every job squeue still lists (pending, running or completing)."""
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {line.strip() for line in out.splitlines() if line.strip()}


def slurm_states_of(records: list[StageRecord]) -> dict[str, str]:
    """The SLURM state of every job the records name (one sacct call for all of them)."""
    return job_states([r.job_id for r in records if r.executor == "slurm" and r.job_id])


def job_active(record: StageRecord, states: dict[str, str]) -> bool:
    """The record names a SLURM job that SLURM still holds (pending, running, requeued, ...)."""
    return record.executor == "slurm" and bool(record.job_id) and states.get(record.job_id or "") in ACTIVE_STATES


def process_alive(record: StageRecord) -> bool:
    """Whether the process the record names is still running (True when it cannot be told from here)."""
    if record.pid is None or record.host != socket.gethostname():
        return True  # cannot tell from here: trust the record
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(record.pid)


def _is_zombie(pid: int) -> bool:
    """A killed process whose parent died too can linger unreaped: it is not running."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def jobs_in_folder(job_dir: Path) -> list[str]:
    """SLURM job ids that left their mark in a run's job folder: submitit's ``<job_dir>/<job id>/``,
    the wrappers' ``mi-<stage>-<job id>.out``."""
    ids: set[str] = set()
    if Path(job_dir).is_dir():
        for entry in Path(job_dir).iterdir():
            match = re.fullmatch(r"(?:mi-\w+-)?(\d+)(?:\.out)?", entry.name)
            if match:
                ids.add(match.group(1))
    return sorted(ids, key=int)


def wait_until_gone(job_ids: list[str], timeout_s: float, poll_s: float = 2.0) -> list[str]:
    """Wait until none of ``job_ids`` is still in the queue; the ids still there at the timeout.

    ``scancel`` returns at once, while a cancelled stage is still saving its position on SIGTERM:
    whatever must not see those writes (mode fresh deleting the run) waits here first. sacct already
    calls such a job CANCELLED while its processes run; squeue lists it (COMPLETING) until they end.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        live = [j for j in job_ids if j in queued_jobs()]
        if not live or time.monotonic() >= deadline:
            return live
        time.sleep(poll_s)


def cancel_jobs(progress: ProgressFile, why: str, job_dir: Path | None = None) -> list[str]:
    """scancel the run's jobs that are still pending or running; record it.

    The run's jobs are those the record names and, with ``job_dir``, every job that left a folder
    or output file there (submitit's ``<job_dir>/<job id>/``, the wrappers' ``mi-<stage>-<job id>.out``):
    a user who reset ``.training_progress`` by hand erased the record's job ids, not the jobs.
    """
    records = progress.read().stages
    ids = {s: r.job_id for s, r in records.items() if r.executor == "slurm" and r.job_id}
    found = [j for j in jobs_in_folder(job_dir) if j not in ids.values()] if job_dir is not None else []
    states = job_states([*ids.values(), *found])
    active = {s: j for s, j in ids.items() if states.get(j) in ACTIVE_STATES}
    stray = [j for j in found if states.get(j) in ACTIVE_STATES]
    if active or stray:
        subprocess.run(["scancel", *active.values(), *stray], check=False, timeout=60)
        for stage, job_id in active.items():
            progress.update_stage(stage, status="failed", error=f"job {job_id} cancelled ({why})")
    return [*active.values(), *stray]


def cancel_stale(progress: ProgressFile, stale: dict[str, str], why: str, wait_s: float) -> list[str]:
    """scancel stage jobs that must not go on (``stale``: stage -> job id), record why, and wait until
    SLURM has let them go: a cancelled stage saves its position on SIGTERM, and the jobs that replace
    it must not start under that write. Returns the ids; raises UserError if one outlives ``wait_s``.
    """
    if not stale:
        return []
    subprocess.run(["scancel", *stale.values()], check=False, timeout=60)
    for stage, job_id in stale.items():
        progress.update_stage(stage, status="failed", error=f"job {job_id} cancelled ({why})")
    live = wait_until_gone(list(stale.values()), wait_s)
    if live:
        raise UserError(f"jobs {' '.join(live)} were cancelled ({why}) but are still running after {wait_s:.0f} s; "
                        f"nothing new was submitted: run resume again once squeue no longer lists them")
    return list(stale.values())
