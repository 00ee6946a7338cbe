"""Cohort predict: many cines, shared out between workers, resumable, summarised in one table.

Layout beside the per-subject folders ``predict`` writes::

    OUT/<subject>/...              what predict_one writes (infarct_seg.nii.gz, report.json, qc.png, ...)
    OUT/<subject>/done.json        written last, atomically: the subject is finished (or failed, and why),
                                   with the fingerprints of the models and the hash of the cine that made it
    OUT/cohort.csv                 one row per finished subject (written atomically, under a lock)
    OUT/.cohort/computed.log       one line per computation started and finished (pid, job, time)

Why it is shaped so: a worker (a local process or one SLURM array task) owns a fixed slice of the
*whole* sorted subject list (``i::n``), so a resubmitted array covers every subject again and the
workers whose subjects are finished exit at once. A subject is computed only under its own file
lock and only when its ``done.json`` is absent or was made by other models or from another cine
(a retrained model, a fixed input), so a resubmission that overlaps a still-running task, or two
cohorts started by mistake, never compute a subject twice, and no row outlives what made it unmarked
(until a worker predicts it again, its row is flagged ``stale_model`` or ``stale_cine``). A
failed subject stays failed until its cine changes or ``--retry-failed`` asks. A subject killed
mid-way has no ``done.json`` and is computed again from scratch; its half-written files are
replaced atomically. Lock files are named by a hash of the subject, so any legal folder name works.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from mi_pipeline.errors import UserError
from mi_pipeline.fsio import atomic_write_text

DONE = "done.json"
TABLE = "cohort.csv"
STATE_DIR = ".cohort"
COLUMNS = ("subject", "infarct_percent", "myocardium_ml", "infarct_ml", "verdict", "aha_numbering", "flags", "model",
           "cine")


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


def lock_path(out: Path, subject: str) -> Path:
    """The subject's lock file, named by a hash: a subject name may be as long as a file name may be."""
    return state_dir(out) / "locks" / f"{hashlib.sha1(subject.encode()).hexdigest()}.lock"


def _cine_files(cine: Path) -> list[Path]:
    """The cine's files: the file itself, or every file of a DICOM series folder, in a fixed order."""
    return sorted(p for p in cine.rglob("*") if p.is_file()) if cine.is_dir() else [cine]


def input_stat(cine: Path) -> list[list[Any]] | None:
    """(relative path, size, mtime in ns) of each of the cine's files, None when unreadable: what tells the
    table writer that a cine is as it was hashed without reading it again."""
    cine = Path(cine)
    try:
        return [[str(p.relative_to(cine)) if p != cine else "", st.st_size, st.st_mtime_ns]
                for p in _cine_files(cine) for st in (p.stat(),)]
    except OSError:
        return None


def input_hash(cine: Path) -> str | None:
    """Content hash of a cine (a file, or every file of a DICOM series folder); None when unreadable
    (the subject is then computed, and fails with predict's own reason)."""
    cine = Path(cine)
    digest = hashlib.sha256()
    try:
        for path in _cine_files(cine):
            digest.update(str(path.relative_to(cine)).encode() + b"\0" if path != cine else b"")
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()[:16]


def is_current(record: dict[str, Any] | None, models: Sequence[str], cine_hash: str | None,
               retry_failed_before: float | None = None) -> bool:
    """Whether a finished record still stands: made by these models from this very cine, and not a
    failure finished before ``retry_failed_before`` (``--retry-failed``: the time the worker started,
    so a failure another worker has just retried is not retried twice)."""
    if record is None or stale_reason(record, models, cine_hash) is not None:
        return False
    return not (retry_failed_before is not None and record.get("status") == "failed"
                and float(record.get("finished", 0)) < retry_failed_before)


def shard(subjects: list[tuple[str, Path]], index: int, count: int) -> list[tuple[str, Path]]:
    """Worker ``index`` of ``count``: a fixed slice of the whole sorted list (stable across resubmissions)."""
    if not 0 <= index < count:
        raise UserError(f"--shard {index}/{count}: index must be in 0..{count - 1}")
    return sorted(subjects)[index::count]


def pending(out: Path, subjects: list[tuple[str, Path]], models: Sequence[str] = (),
            retry_failed: bool = False) -> list[str]:
    """The subjects whose record is missing or no longer stands (see ``is_current``)."""
    since = time.time() if retry_failed else None
    return [sid for sid, cine in sorted(subjects)
            if not is_current(read_done(out, sid), models, input_hash(cine), since)]


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
              log: Callable[[str], None] = print, *, models: Sequence[str] = (),
              retry_failed: bool = False) -> dict[str, int]:
    """Predict every subject of this worker's list whose record does not stand; returns counts.

    ``predict(subject, cine)`` returns the report; ``models`` are the fingerprints of the model files
    it uses. Any exception of one subject (a bad input's UserError, or anything else) finishes it as
    *failed* with its one-line reason, so the cohort goes on and the table says why.
    """
    counts = {"computed": 0, "skipped": 0, "failed": 0, "busy": 0}
    since = time.time() if retry_failed else None
    for sid, cine in subjects:
        cine_stat, cine_hash = input_stat(cine), input_hash(cine)  # the stat first: a later change shows in it
        if is_current(read_done(out, sid), models, cine_hash, since):
            counts["skipped"] += 1
            continue
        lock = lock_path(out, sid)
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(lock), timeout=0):
                if is_current(read_done(out, sid), models, cine_hash, since):
                    counts["skipped"] += 1  # finished by another worker since we looked
                    continue
                outcome = _compute(out, sid, cine, predict, log)
                counts[outcome["status"] if outcome["status"] == "failed" else "computed"] += 1
                outcome.update(models=list(models), input=cine_hash, input_stat=cine_stat)
                atomic_write_text(done_path(out, sid), json.dumps(outcome, indent=1) + "\n")
                _log(out, "done", sid)
        except Timeout:  # another worker holds it right now
            counts["busy"] += 1
    return counts


def _compute(out: Path, sid: str, cine: Path, predict: Callable[[str, Path], dict[str, Any]],
             log: Callable[[str], None]) -> dict[str, Any]:
    """One subject's record: its table row, or why it failed (any exception: the worker goes on)."""
    _log(out, "start", sid)
    started = time.time()
    try:
        record = {"subject": sid, "status": "ok", **table_row(predict(sid, cine))}
    except Exception as exc:  # noqa: BLE001 - one subject's failure must not end the worker
        reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        reason = " ".join(reason.split())
        record = {"subject": sid, "status": "failed", "flags": f"failed: {reason}", "cine": str(cine)}
        log(f"{sid}: failed: {reason}")
    record.update(started=round(started, 3), finished=round(time.time(), 3), pid=os.getpid(),
                  job=os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "")))
    return record


def table_row(report: dict[str, Any]) -> dict[str, Any]:
    """The cohort table's columns from one subject's report.json: the number with its verdict (plausible,
    implausible, not_a_measurement), how the AHA segments were numbered and what the model learnt from,
    so a row read alone says how far to trust it."""
    flags = []
    confidence = report.get("confidence", {})
    if confidence.get("plausibility", {}).get("implausible"):
        flags.append("implausible_shape")
    if report.get("warnings"):
        flags.append(f"warnings:{len(report['warnings'])}")
    trust = report.get("trust") or {}
    if (trust.get("model") or {}).get("myocardium_only"):
        flags.append("infarct_not_estimated")
    anchor = (report.get("aha_anchor") or {}).get("method")
    return {"infarct_percent": report["infarct_percent"], "myocardium_ml": report["myocardium_ml"],
            "infarct_ml": report["infarct_ml"], "verdict": trust.get("verdict", ""),
            "aha_numbering": "" if anchor is None else "fixed_angle" if anchor == "fixed" else "rv_insertion",
            "flags": ";".join(flags), "model": (trust.get("model") or {}).get("summary", ""),
            "cine": report.get("cine", "")}


def stale_reason(record: dict[str, Any], models: Sequence[str], cine_hash: str | None) -> str | None:
    """Why a finished record no longer stands for the models and cine of this run (None: it does)."""
    if record.get("models") != list(models):
        return "stale_model"  # made by other models (retrained, another run): not yet predicted again
    if record.get("input") != cine_hash:
        return "stale_cine"  # the cine was replaced since
    return None


def _hash_unless_unchanged(record: dict[str, Any], cine: Path) -> str | None:
    """The cine's content hash: the record's own while the cine's files have the sizes and times recorded
    with it, else read again. Every worker rewrites the table when it ends; hashing every cine each time
    would read the whole cohort once per worker."""
    if record.get("input_stat") is not None and record["input_stat"] == input_stat(cine):
        return record.get("input")
    return input_hash(cine)


def write_table(out: Path, subjects: list[tuple[str, Path]], models: Sequence[str]) -> tuple[int, int]:
    """Rewrite ``cohort.csv`` from every finished subject's record, atomically, under the cohort lock.

    Every worker calls it when it ends, so the last one leaves the full table; rows are in subject
    order whatever the order of finishing. The records are read under the lock: a worker that waited
    for it never writes a table older than the one written while it waited. A row whose record was made
    by other models or from another cine (a shard not yet rerun after a retrain, a cancelled array) keeps
    its numbers but its flags start with ``stale_model`` / ``stale_cine``, so an old result never reads
    as the current model's. Returns (rows, stale rows).
    """
    state_dir(out).mkdir(parents=True, exist_ok=True)
    with FileLock(str(state_dir(out) / "table.lock"), timeout=60):
        rows, stale = [], 0
        for sid, cine in sorted(subjects):
            record = read_done(out, sid)
            if record is None:
                continue
            reason = stale_reason(record, models, _hash_unless_unchanged(record, cine))
            if reason is not None:
                record = {**record, "flags": ";".join(f for f in (reason, record.get("flags", "")) if f)}
                stale += 1
            rows.append(record)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(Path(out) / TABLE, buffer.getvalue())
    return len(rows), stale
