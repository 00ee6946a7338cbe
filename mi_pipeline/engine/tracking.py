"""TensorBoard event files that survive requeues: one run per stage, each epoch once, steps increasing.

The source of truth is ``metrics.jsonl``, which resume trims to the epochs ``last.pth`` holds. An
epoch reaches TensorBoard only once it is committed (its ``last.pth`` is on disk), and every
(re)start rewrites the event file from the trimmed ``metrics.jsonl``: a killed, requeued or extended
stage therefore shows as the same single run, with no duplicated or orphaned points -- the problem
Lightning users report when every requeue starts a new logger run.

Scalars: every number of an epoch's record (losses, validation figures and their baselines, ``lr``,
``seconds``) at step = epoch, written by ``engine/events.py`` (no TensorBoard import in a stage job; the
``tensorboard`` package is only needed to view them).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from mi_pipeline.engine.events import EventFile

SKIP = ("epoch", "step", "best")  # bookkeeping, not curves


class TensorBoardRun:
    """The stage's TensorBoard run in ``<log dir>/tensorboard`` (rank 0 only; see StageLog)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self._file: EventFile | None = None
        self.unavailable: str | None = None  # why events stopped being written (a full disk must not stop training)

    def restart_from(self, records: list[dict[str, Any]]) -> None:
        """Replace the run with exactly ``records`` (the committed epochs), one event file."""
        self.close()
        self.unavailable = None
        shutil.rmtree(self.dir, ignore_errors=True)
        for record in records:
            self.add(record)

    def add(self, record: dict[str, Any]) -> None:
        if self.unavailable is not None or not isinstance(record.get("epoch"), int):
            return
        values = {key: float(value) for key, value in record.items()
                  if key not in SKIP and isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value)}
        try:
            if self._file is None:
                self._file = EventFile(self.dir)
            self._file.add_scalars(values, step=record["epoch"])
        except OSError as exc:
            self.close()
            self.unavailable = f"TensorBoard events not written from epoch {record['epoch']} on: {exc}"

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the events are a view of metrics.jsonl; the next (re)start rewrites them
            self._file = None
