"""Cohort predict: many cines, shared out between workers, resumable, summarised in one table.

Layout beside the per-subject folders ``predict`` writes::

    OUT/<subject>/...              what predict_one writes (infarct_seg.nii.gz, report.json, qc.png, ...)
    OUT/<subject>/done.json        written last, atomically: the subject is finished (or failed, and why)
    OUT/cohort.csv                 one row per finished subject (written atomically, under a lock)
    OUT/.cohort/computed.log       one line per computation started and finished (pid, job, time)

Why it is shaped so: a worker (a local process or one SLURM array task) owns a fixed slice of the
*whole* sorted subject list (``i::n``), so a resubmitted array covers every subject again and the
workers whose subjects are finished exit at once. A subject is computed only under its own file
lock and only when ``done.json`` is absent, so a resubmission that overlaps a still-running task,
or two cohorts started by mistake, never compute a subject twice. A subject killed mid-way has no
``done.json`` and is computed again from scratch; its half-written files are replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mi_pipeline.errors import UserError
from mi_pipeline.fsio import atomic_write_text

DONE = "done.json"
TABLE = "cohort.csv"
STATE_DIR = ".cohort"
COLUMNS = ("subject", "infarct_percent", "myocardium_ml", "infarct_ml", "flags", "cine")


def state_dir(out: Path) -> Path:
    return Path(out) / STATE_DIR


def done_path(out: Path, subject: str) -> Path:
    return Path(out) / subject / DONE


def read_done(out: Path, subject: str) -> dict[str, Any] | None:
    """The subject's finished record, or None while it is not finished."""
    try:
        record = json.loads(done_path(out, subject).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def shard(subjects: list[tuple[str, Path]], index: int, count: int) -> list[tuple[str, Path]]:
    """Worker ``index`` of ``count``: a fixed slice of the whole sorted list (stable across resubmissions)."""
    if not 0 <= index < count:
        raise UserError(f"--shard {index}/{count}: index must be in 0..{count - 1}")
    return sorted(subjects)[index::count]


def pending(out: Path, subjects: list[tuple[str, Path]]) -> list[str]:
    return [sid for sid, _ in sorted(subjects) if read_done(out, sid) is None]


def _log(out: Path, event: str, subject: str) -> None:
    """One line per event, appended (O_APPEND: whole lines even from concurrent workers)."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "-"))
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "-")
    line = f"{time.time():.3f} {event} {subject} pid={os.getpid()} job={job}_{task} host={socket.gethostname()}\n"
    path = state_dir(out) / "computed.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o664)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def run_shard(subjects: list[tuple[str, Path]], out: Path, predict: Callable[[str, Path], dict[str, Any]],
              log: Callable[[str], None] = print) -> dict[str, int]:
    """Predict every subject of this worker's list that is not finished; returns counts.

    ``predict(subject, cine)`` returns the report. A subject whose input is bad (UserError) is
    finished as *failed* with its one-line reason, so the cohort goes on and the table says why.
    """
    counts = {"computed": 0, "skipped": 0, "failed": 0, "busy": 0}
    for sid, cine in subjects:
        if read_done(out, sid) is not None:
            counts["skipped"] += 1
            continue
        (state_dir(out) / "locks").mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(state_dir(out) / "locks" / f"{sid}.lock"), timeout=0)
        try:
            with lock:
                if read_done(out, sid) is not None:  # finished by another worker since we looked
                    counts["skipped"] += 1
                    continue
                _log(out, "start", sid)
                started = time.time()
                try:
                    report = predict(sid, cine)
                    record = {"subject": sid, "status": "ok", **table_row(report)}
                    counts["computed"] += 1
                except UserError as exc:
                    record = {"subject": sid, "status": "failed", "flags": f"failed: {exc}", "cine": str(cine)}
                    counts["failed"] += 1
                    log(f"{sid}: failed: {exc}")
                record.update(started=round(started, 3), finished=round(time.time(), 3), pid=os.getpid(),
                              job=os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "")))
                atomic_write_text(done_path(out, sid), json.dumps(record, indent=1) + "\n")
                _log(out, "done", sid)
        except Timeout:  # another worker holds it right now
            counts["busy"] += 1
    return counts


def table_row(report: dict[str, Any]) -> dict[str, Any]:
    """The cohort table's columns from one subject's report.json."""
    flags = []
    confidence = report.get("confidence", {})
    if confidence.get("plausibility", {}).get("implausible"):
        flags.append("implausible_shape")
    if report.get("warnings"):
        flags.append(f"warnings:{len(report['warnings'])}")
    return {"infarct_percent": report["infarct_percent"], "myocardium_ml": report["myocardium_ml"],
            "infarct_ml": report["infarct_ml"], "flags": ";".join(flags), "cine": report.get("cine", "")}


def write_table(out: Path, subjects: list[tuple[str, Path]]) -> int:
    """Rewrite ``cohort.csv`` from every finished subject's record, atomically, under the cohort lock.

    Every worker calls it when it ends, so the last one leaves the full table; rows are in subject
    order whatever the order of finishing. Returns the number of rows.
    """
    rows = [r for r in (read_done(out, sid) for sid, _ in sorted(subjects)) if r is not None]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    state_dir(out).mkdir(parents=True, exist_ok=True)
    with FileLock(str(state_dir(out) / "table.lock"), timeout=60):
        atomic_write_text(Path(out) / TABLE, buffer.getvalue())
    return len(rows)
