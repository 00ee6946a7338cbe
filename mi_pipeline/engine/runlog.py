"""Per-stage logs: ``train.log`` for people, ``metrics.jsonl`` (one object per epoch) for programs.

Lines go to stderr as well, so a SLURM job's output file tells the same story. A tqdm bar is used
only when stderr is a terminal; batch logs get a plain progress line at most every ``every_s``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

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
        """Stop the TensorBoard writer's thread (the loop's end: before the process group goes away)."""
        self.tensorboard.close()

    def epoch_committed(self, record: dict[str, Any]) -> None:
        """An epoch whose last.pth is on disk: it can never be redone, so it goes to TensorBoard now."""
        if self.files:
            self.tensorboard.add(_finite(record))

    def progress(self, total: int, initial: int, desc: str) -> "BatchProgress":
        return BatchProgress(self, total, initial, desc)


class BatchProgress:
    """tqdm on a terminal; otherwise a plain line now and then (batch logs stay readable)."""

    def __init__(self, log: StageLog, total: int, initial: int, desc: str, every_s: float = 30.0) -> None:
        self.log, self.total, self.done, self.desc, self.every_s = log, total, initial, desc, every_s
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False) if sys.stderr.isatty() else None
        self.last_print = time.monotonic()

    def update(self, loss: float) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        elif time.monotonic() - self.last_print >= self.every_s:
            self.last_print = time.monotonic()
            self.log.info(f"{self.desc} batch {self.done}/{self.total} loss {loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: write null instead so every line parses everywhere."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
