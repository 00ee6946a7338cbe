"""TensorBoard event files that survive requeues: one run per stage, each epoch once, steps increasing.

The source of truth is ``metrics.jsonl``, which resume trims to the epochs ``last.pth`` holds. An
epoch reaches TensorBoard only once it is committed (its ``last.pth`` is on disk), and every
(re)start rewrites the event file from the trimmed ``metrics.jsonl``: a killed, requeued or extended
stage therefore shows as the same single run, with no duplicated or orphaned points -- the problem
Lightning users report when every requeue starts a new logger run.

Scalars: every number of an epoch's record (losses, validation figures and their baselines, ``lr``,
``seconds``) at step = epoch. Without the ``tensorboard`` package nothing is written (one log line).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

SKIP = ("epoch", "step", "best")  # bookkeeping, not curves


class TensorBoardRun:
    """The stage's TensorBoard run in ``<log dir>/tensorboard`` (rank 0 only; see StageLog)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self._writer: Any = None
        self.unavailable: str | None = None

    def restart_from(self, records: list[dict[str, Any]]) -> None:
        """Replace the run with exactly ``records`` (the committed epochs), one event file."""
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._import()
        for record in records:
            self.add(record)

    def add(self, record: dict[str, Any]) -> None:
        writer = self._open()
        if writer is None or not isinstance(record.get("epoch"), int):
            return
        for key, value in record.items():
            if key not in SKIP and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                writer.add_scalar(key, value, global_step=record["epoch"])
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _import(self) -> Any:
        """TensorBoard's ``SummaryWriter`` class, or None (and ``unavailable`` says why). Called at
        every (re)start, before the training loop: the import costs ~0.2-0.4 s of CPU, which the first
        epoch's commit (a callback on the loop's thread) would otherwise pay in the middle of training.
        (It used to come for free with MONAI's import, which no longer loads TensorBoard.)"""
        if self.unavailable is not None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            self.unavailable = f"TensorBoard events not written ({exc}); pip install tensorboard"
            return None
        return SummaryWriter

    def _open(self) -> Any:
        if self._writer is None:
            writer_class = self._import()
            if writer_class is None:
                return None
            self.dir.mkdir(parents=True, exist_ok=True)
            self._writer = writer_class(log_dir=str(self.dir))
        return self._writer
