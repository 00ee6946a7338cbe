"""The progress record ``.training_progress``: the only code that reads or writes it.

Format (human first): line 1 is the seed's state name, so ``cat .training_progress`` shows it and
``echo step1_data_prepared > .training_progress`` resets it; the per-stage detail follows as JSON.

    step2_motion_trained
    # mi_pipeline progress: line 1 is the state; the JSON below is per-stage detail.
    {"version": 1, "state": "step2_motion_trained", "stages": {...}}

Every update is a read-modify-write under a file lock, written atomically (temp + fsync + rename),
so concurrent jobs and user commands never lose an update and readers never see a torn file.
A file whose first line is not a state is never trusted: it is kept as ``.training_progress.corrupt``
and the record is rebuilt from what is on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from mi_pipeline.errors import UserError
from mi_pipeline.fsio import atomic_write_text, remove_stale_temps
from mi_pipeline.graph import STAGES
from mi_pipeline.layout import PROGRESS_FILE, RunLayout
from mi_pipeline.orchestration.records import (
    RECORD_VERSION,
    STATES,
    STATUSES,
    Progress,
    RecordError,
    StageRecord,
    done_from_state,
    now,
    state_from_done,
)

__all__ = ["FILENAME", "STATES", "STATUSES", "LOCK_TIMEOUT_S", "Progress", "ProgressFile", "StageRecord",
           "done_from_state", "now", "state_from_done"]

FILENAME = PROGRESS_FILE  # one spelling: the run-directory contract owns it
LOCK_TIMEOUT_S = 120.0


class ProgressFile:
    """The record of one run directory. ``inspect_disk`` rebuilds it when the file is corrupted."""

    def __init__(self, run_dir: Path, inspect_disk: Callable[[], dict[str, StageRecord]] | None = None) -> None:
        self.path = Path(run_dir) / FILENAME
        self.lock_path = Path(run_dir) / f"{FILENAME}.lock"
        self.inspect_disk = inspect_disk
        self._read_only = False  # set by read() on a directory this user cannot write

    @classmethod
    def for_run(cls, layout: RunLayout) -> ProgressFile:
        """The record of a run (or a fold): what every command and job opens.

        A corrupted record is always repaired the same way, whoever opens it: kept aside and rebuilt
        from the checkpoints on disk (``health.rebuild_records``, which is only called then).
        """
        def on_disk() -> dict[str, StageRecord]:
            from mi_pipeline.orchestration.health import rebuild_records

            return rebuild_records(layout)

        return cls(layout.root, inspect_disk=on_disk)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        for path in (self.path, self.lock_path):
            if path.is_symlink():
                raise UserError(f"{path}: is a symbolic link; refusing to follow it (remove the link)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), timeout=LOCK_TIMEOUT_S)
        try:
            with lock:
                yield
        except TimeoutError:
            raise UserError(f"{self.lock_path}: could not take the progress lock in {LOCK_TIMEOUT_S:.0f}s "
                            "(another mi_pipeline command is holding it)") from None

    def read(self) -> Progress:
        """The current record (repairing and persisting a corrupted file under the lock).

        Reading never creates anything: a run directory that does not exist reads as a new run, and
        one this user cannot write (a colleague's run, a read-only mount) is read without the lock --
        every write is an atomic rename, so the file read is always a whole one -- and a corrupted
        record is repaired in memory only.
        """
        if not self.path.parent.is_dir():
            return Progress()
        if not os.access(self.path.parent, os.W_OK):
            self._read_only = True
            return self._read_locked()
        with self.locked():
            return self._read_locked()

    @contextlib.contextmanager
    def update(self) -> Iterator[Progress]:
        """Read-modify-write under the lock; the change is written when the block exits cleanly."""
        with self.locked():
            progress = self._read_locked()
            yield progress
            self._write_locked(progress)

    def reset(self) -> None:
        """Forget all progress (mode fresh)."""
        with self.locked():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def update_stage(self, stage: str, **changes: Any) -> StageRecord:
        with self.update() as progress:
            record = progress.stages[stage]
            for key, value in changes.items():
                setattr(record, key, value)
            record.updated = now()
            return dataclasses.replace(record)

    # --- internals ------------------------------------------------------------------------

    def _read_locked(self) -> Progress:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Progress()
        except (OSError, UnicodeDecodeError) as exc:
            return self._rebuild(f"unreadable ({exc})")
        first, _, rest = text.partition("\n")
        state = first.strip()
        if state not in STATES:
            shown = repr(first.strip()[:40]) if first.strip() else "empty"
            return self._rebuild(f"first line {shown} is not a progress state")
        detail = _parse_detail(rest)
        progress = Progress()
        if detail is not None:
            _check_version(self.path, detail)
            try:
                progress = Progress.from_json(detail)
            except RecordError as exc:
                return self._rebuild(f"{exc}")
        if detail is None or detail.get("state") != state:
            self._apply_hand_written(progress, state)
        return progress

    def _apply_hand_written(self, progress: Progress, state: str) -> None:
        declared = done_from_state(state)
        for stage in STAGES:
            record = progress.stages[stage]
            if stage in declared and record.status != "done":
                record.status, record.note = "done", f"marked done by hand ({state})"
            elif stage not in declared and record.status != "not_started":
                # The job that may still be queued for it stays known (fresh and cancel must find it;
                # resume must not submit a duplicate beside it).
                progress.stages[stage] = StageRecord(note=f"reset by hand ({state})", job_id=record.job_id,
                                                     executor=record.executor, pid=record.pid, host=record.host)
        progress.notes.append(f"{self.path.name} was set by hand to {state}")

    def _rebuild(self, why: str) -> Progress:
        progress = Progress()
        if self.inspect_disk is not None:
            progress.stages.update(self.inspect_disk())
        if self._read_only:
            progress.notes.append(f"{self.path.name} is corrupted ({why}); read-only here, so it was rebuilt in "
                                  f"memory only from the checkpoints on disk: {progress.state}")
            return progress
        kept = self.path.with_name(f"{FILENAME}.corrupt")
        with contextlib.suppress(OSError):
            os.replace(self.path, kept)
        progress.notes.append(f"{self.path.name} was corrupted ({why}); kept a copy as {kept.name} and "
                              f"rebuilt the progress from the checkpoints on disk: {progress.state}")
        self._write_locked(progress)
        return progress

    def _write_locked(self, progress: Progress) -> None:
        remove_stale_temps(self.path)  # left by a writer killed mid-write; we hold the lock, so none is live
        body = json.dumps(progress.to_json(), indent=1, sort_keys=False)
        try:
            atomic_write_text(self.path, f"{progress.state}\n# mi_pipeline progress: line 1 is the state; "
                                         f"the JSON below is per-stage detail.\n{body}\n")
        except OSError as exc:  # disk full, quota, read-only: the old record is intact (atomic write)
            raise UserError(f"{self.path}: cannot update the progress record ({exc.strerror or exc}); "
                            "the previous record is unchanged") from None


def _check_version(path: Path, detail: dict[str, Any]) -> None:
    """A record written by a newer mi_pipeline is refused, not read as ours with its news dropped."""
    version = detail.get("version", RECORD_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > RECORD_VERSION:
        raise UserError(f"{path}: written by a newer mi_pipeline (record version {version}; this one reads "
                        f"version {RECORD_VERSION}); use that version, or upgrade mi_pipeline")


def _parse_detail(rest: str) -> dict[str, Any] | None:
    lines = [line for line in rest.splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).strip()
    if not text:
        return None
    try:
        detail = json.loads(text)
    except ValueError:
        return None
    return detail if isinstance(detail, dict) else None
