"""One trainer per stage of a run: the stage lease, kept in the progress record under its lock.

Run directories live on shared filesystems: two terminals, two people or a job and a terminal can
start the same stage of the same run. Both would train to the end, append the same epochs to
``metrics.jsonl`` twice and sweep each other's temp files. The lease prevents that: a stage that
starts records itself as ``running`` with its host, pid, SLURM job id and a heartbeat, all under
the record's lock; a second starter finds a live holder and stops with one line naming it.

A holder is gone -- and its lease taken over -- only when that can be shown: its process is not
running on this host, its SLURM job is no longer held by SLURM, or (another host, no SLURM) its
heartbeat is older than ``STALE_AFTER_S``. A requeued SLURM job keeps its job id: the new attempt
takes over its own lease.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from mi_pipeline.errors import UserError
from mi_pipeline.orchestration import jobs
from mi_pipeline.orchestration.progress import ProgressFile
from mi_pipeline.orchestration.records import StageRecord, now

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # a holder on another host without SLURM is presumed gone after 20 missed heartbeats


@dataclass(frozen=True)
class Holder:
    """Who is asking for (or holds) a lease."""

    host: str
    pid: int
    job_id: str | None

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), os.environ.get("SLURM_JOB_ID"))

    def owns(self, record: StageRecord) -> bool:
        """The record names this holder: the same process, or the same SLURM job (a requeued attempt)."""
        if self.job_id and record.executor == "slurm" and record.job_id == self.job_id:
            return True
        return record.host == self.host and record.pid == self.pid


def describe(record: StageRecord) -> str:
    where = f"SLURM job {record.job_id}" if record.executor == "slurm" and record.job_id else "process"
    return f"{where} (pid {record.pid} on {record.host}, since {record.started or '?'})"


def holder_alive(record: StageRecord, states: dict[str, str] | None = None) -> bool:
    """Whether the holder a running record names can be shown to be gone (False) or not (True)."""
    if record.executor == "slurm" and record.job_id:
        states = states if states is not None else jobs.job_states([record.job_id])
        state = states.get(record.job_id)
        return state in jobs.ACTIVE_STATES if state is not None else _heartbeat_fresh(record)
    if record.host == socket.gethostname():
        return jobs.process_alive(record)
    return _heartbeat_fresh(record)


def _heartbeat_age_s(record: StageRecord) -> float | None:
    """Seconds since the holder's last heartbeat (None: none recorded, or unreadable)."""
    seen = record.heartbeat or record.updated
    if not seen:
        return None
    try:
        return time.time() - datetime.strptime(seen, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _heartbeat_fresh(record: StageRecord) -> bool:
    age = _heartbeat_age_s(record)
    return age is not None and age < STALE_AFTER_S


def _judged_by_heartbeat(record: StageRecord) -> bool:
    """Whether only the heartbeat can show this holder gone: another host, and no SLURM job to ask about."""
    return not (record.executor == "slurm" and record.job_id) and record.host != socket.gethostname()


def _when_it_lapses(record: StageRecord) -> str:
    """For a holder only its heartbeat can judge: how old it is, and when the lease lapses if that host
    is down (a crashed node's lease is not broken at once: nothing here can tell it from a slow one)."""
    age = _heartbeat_age_s(record)
    if not _judged_by_heartbeat(record) or age is None:
        return ""
    return (f"; its last heartbeat was {max(age, 0.0):.0f} s ago: if {record.host} is down, the lease lapses "
            f"{max(STALE_AFTER_S - age, 0.0):.0f} s from now (after {STALE_AFTER_S:.0f} s without one)")


def take(progress: ProgressFile, stage: str, holder: Holder, log_path: str) -> StageRecord:
    """Record ``holder`` as the stage's trainer, or raise UserError naming the live holder.

    Returns the record as it was before (its epoch is the work a restart would lose).
    """
    with progress.update() as record:
        entry = record.stages[stage]
        before = StageRecord(**vars(entry))
        if entry.status == "running" and not holder.owns(entry) and holder_alive(entry):
            raise UserError(f"{stage} is already being trained in this run by {describe(entry)}; one trainer per "
                            f"stage: wait for it (python -m mi_pipeline.status), or stop it first"
                            + _when_it_lapses(entry))
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)  # requeues SLURM did itself count too
        stamp = now()
        entry.status, entry.attempts, entry.requeues = "running", entry.attempts + 1, max(entry.requeues, restarts)
        entry.pid, entry.host, entry.job_id = holder.pid, holder.host, holder.job_id
        entry.executor = "slurm" if holder.job_id else "local"
        entry.log, entry.started, entry.heartbeat, entry.updated = log_path, stamp, stamp, stamp
        entry.finished = entry.error = None
    return before


class Heartbeat:
    """Refreshes the lease's heartbeat every ``HEARTBEAT_S`` seconds while a stage trains.

    Only a holder on another host without SLURM is judged by it; it stops writing as soon as the
    record names someone else (the lease was taken over), so it never claims a lease back.
    """

    def __init__(self, progress: ProgressFile, stage: str, holder: Holder, every_s: float = HEARTBEAT_S) -> None:
        self.progress, self.stage, self.holder, self.every_s = progress, stage, holder, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{stage}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with self.progress.update() as record:
                    entry = record.stages[self.stage]
                    if entry.status != "running" or not self.holder.owns(entry):
                        return
                    entry.heartbeat = now()
            except (UserError, OSError):
                continue  # a full disk or a busy lock: the next beat tries again
