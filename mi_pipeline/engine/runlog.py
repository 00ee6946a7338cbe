"""Per-stage logs: ``train.log`` for people, ``metrics.jsonl`` (one object per epoch) for programs.

Lines go to stderr as well, so a SLURM job's output file tells the same story. Progress on anything
long (``Progress``, ``progress``: training batches, the data step's subjects, the registration QA,
``evaluate``) is one way everywhere: a tqdm bar when stderr is a terminal; otherwise a plain line
through the caller's log at every tenth of the work or every ``every_s`` seconds, whichever comes first
(batches: by time only, an epoch's ten lines would drown the epoch lines).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from mi_pipeline.engine.tracking import TensorBoardRun
from mi_pipeline.fsio import atomic_write_text


class StageLog:
    """``files=False`` (data-parallel ranks other than 0) logs to stderr only."""

    def __init__(self, log_dir: Path, stage: str, files: bool = True, prefix: str = "") -> None:
        self.dir = Path(log_dir)
        self.files = files
        if files:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.stage = stage
        self.prefix = prefix
        self.train_log = self.dir / "train.log"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.tensorboard = TensorBoardRun(self.dir / "tensorboard")

    def info(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{self.stage}{self.prefix}] {message}"
        if self.files:
            try:
                with open(self.train_log, "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
            except OSError as exc:  # a full disk must not turn the real error into a traceback here
                line += f"  [not written to {self.train_log}: {exc.strerror or exc}]"
        print(line, file=sys.stderr, flush=True)

    def epoch_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_finite(record), sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        records = []
        try:
            lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a crash mid-append
        return records

    def keep_metrics_through(self, epoch: int) -> None:
        """On resume: drop records of epochs the checkpoint does not contain (they will be redone), and
        make the TensorBoard run exactly the kept epochs again (engine/tracking.py)."""
        records = self.read_metrics()
        kept = [r for r in records if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch]
        if len(kept) != len(records) or self.metrics_path.exists():
            atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        if self.files:
            self.tensorboard.restart_from(kept)
            if self.tensorboard.unavailable:
                self.info(self.tensorboard.unavailable)

    def close(self) -> None:
        """Close the TensorBoard event file (the loop's end)."""
        self.tensorboard.close()

    def epoch_committed(self, record: dict[str, Any]) -> None:
        """An epoch whose last.pth is on disk: it can never be redone, so it goes to TensorBoard now."""
        if self.files:
            failed_before = self.tensorboard.unavailable
            self.tensorboard.add(_finite(record))
            if self.tensorboard.unavailable and not failed_before:
                self.info(self.tensorboard.unavailable)

    def progress(self, total: int, initial: int, desc: str) -> BatchProgress:
        return BatchProgress(self, total, initial, desc)


class Progress:
    """tqdm on a terminal; otherwise a line through ``log`` at each ``every_fraction`` of ``total`` (None:
    never) or after ``every_s`` seconds of silence, and one at the end, so a batch log shows the step is alive."""

    def __init__(self, total: int, desc: str, log: Callable[[str], None], *, initial: int = 0, unit: str = "",
                 every_s: float = 30.0, every_fraction: float | None = 0.1) -> None:
        self.total, self.done, self.desc, self.log, self.unit = total, initial, desc, log, unit
        self.every_s, self.every_fraction = every_s, every_fraction
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit or "it", leave=False) \
            if sys.stderr.isatty() else None
        self.last_print, self.last_fraction = time.monotonic(), initial / total if total else 0.0

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note)
            return
        fraction = self.done / self.total if self.total else 1.0
        due_fraction = self.every_fraction is not None and fraction - self.last_fraction >= self.every_fraction - 1e-9
        if due_fraction or time.monotonic() - self.last_print >= self.every_s:
            self.last_print, self.last_fraction = time.monotonic(), fraction
            self.log(self.line(note))

    def line(self, note: str = "") -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.desc} {self.done}/{self.total}{unit}" + (f" {note}" if note else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, log: Callable[[str], None], unit: str = "") -> Iterator[T]:
    """``items`` with ``Progress`` reported as each one is finished (the caller's loop body runs between)."""
    bar = Progress(total, desc, log, unit=unit)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


class BatchProgress(Progress):
    """Training batches: the loss beside the count, a line by time only."""

    def __init__(self, log: StageLog, total: int, initial: int, desc: str, every_s: float = 30.0) -> None:
        super().__init__(total, desc, log.info, initial=initial, unit="batch", every_s=every_s, every_fraction=None)

    def update(self, loss: float | None) -> None:  # type: ignore[override]
        """``loss``: the newest one read (the loop reads them in batches), None before the first read."""
        super().update(1, f"loss {loss:.4f}" if loss is not None else "")

    def line(self, note: str = "") -> str:
        return f"{self.desc} batch {self.done}/{self.total}" + (f" {note}" if note else "")


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: write null instead so every line parses everywhere."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
