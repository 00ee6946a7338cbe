"""Checkpoint writes in the background: the training loop waits for an in-memory copy, not the disk.

Why: an atomic write pays fsyncs (file + folder) on top of serialising; on a quiet local disk that
is ~15 ms per file, on a busy parallel filesystem it can be seconds, every epoch. The loop hands
the writer a snapshot (``checkpoint.to_record``: every tensor copied into one CPU buffer per dtype,
so the next optimizer step may change the originals) and goes on; one thread writes the files, one
at a time, in the order given, each through ``checkpoint.write_record`` (temp file, fsync, rename,
folder fsync: crash-safety is unchanged).

What must not run ahead of the disk: a callback given with a write (the epoch's log line, the
progress record) runs on the caller's thread only once that file is durable, so nothing outside
the checkpoint folder ever claims an epoch that a crash could still take back. A failed write
(disk full) surfaces as the same one-line CheckpointError at the next ``poll``/``flush``.

What the write takes from the steps beside it: ``torch.save`` pickles in Python under the GIL (the
pickler calls torch's Python ``persistent_id`` for every object: ~18 000 calls for 840 separate
tensors, which is why the record packs them: engine/packing.py), and the training thread needs the
GIL back after every operator, which it otherwise gets only when the interpreter's switch interval
(5 ms) makes the writer let go -- a convoy. Measured on the 2-core
development VM under load (1-thread conv steps beside a writer saving 3 MB / 840 tensors in a loop):
84-118 ms per step alone, 217-261 ms beside the writer at 5 ms, 171-174 ms at 0.5 ms. So while a
write is in flight the interval is ``WRITE_SWITCH_S``, then restored.

What the loop waits for, the copy: one ``torch.cat`` per dtype (``packing``), on torch's threads as
training set them (``packing._Packer.buffers`` says why the count is not changed around it).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mi_pipeline.engine.checkpoint import to_record, write_record

WRITE_SWITCH_S = 0.0005  # GIL switch interval while a background write runs (Python's default: 0.005)
MAX_PENDING = 1  # one save_all (an epoch's best + last) in flight; a slower disk makes the loop wait instead of piling up copies


def _write_in_order(items: list[tuple[Any, ...]]) -> float:
    """Write each (path, record[, then]) in turn; the first failure stops the rest. Returns the
    CPU seconds this thread spent (what the write takes from training on busy cores)."""
    started = time.thread_time()
    for path, record, *then in items:
        write_record(path, record)
        if then and then[0] is not None:
            then[0]()
    return time.thread_time() - started


def _write_in_background(items: list[tuple[Any, ...]]) -> float:
    """``_write_in_order`` on the writer thread, handing the GIL back to the training thread sooner."""
    default = sys.getswitchinterval()
    sys.setswitchinterval(min(default, WRITE_SWITCH_S))
    try:
        return _write_in_order(items)
    finally:
        sys.setswitchinterval(default)


def _run_all(callbacks: list[Callable[[], None]]) -> Callable[[], None] | None:
    """One callback that runs ``callbacks`` in order (None when there are none)."""
    if not callbacks:
        return None

    def run() -> None:
        for callback in callbacks:
            callback()

    return run


class CheckpointWriter:
    """Writes checkpoints in order on one background thread (``background=False``: in the caller)."""

    def __init__(self, background: bool = True) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint") if background else None
        self._pending: deque[tuple[Future[float], Callable[[], None] | None, float]] = deque()
        self.last_cost_s = 0.0  # the newest finished save: the loop's wait for the copy + the writer's CPU seconds

    def save(self, path: Path, payload: dict[str, Any], then: Callable[[], None] | None = None) -> None:
        """Write ``payload`` to ``path``; ``then`` runs (on this thread) once the file is durable."""
        self.save_all([(path, payload, then)])

    def save_all(self, items: list[tuple[Path, dict[str, Any], Callable[[], None] | None]]) -> None:
        """Several files in order (an epoch's best, then last), all or none after the first failure:
        a ``best_model.pth`` that could not be written must not let that epoch's ``last.pth`` (which
        says the epoch is done and was best) through. Every snapshot is taken before the first write
        starts: a write holds the GIL while it pickles, and copying tensors beside it would make the
        loop wait for it after all."""
        if self._pool is None:
            self.last_cost_s = _write_in_order([(path, to_record(payload), then) for path, payload, then in items])
            return
        while self._pending and len(self._pending) + 1 > MAX_PENDING:
            self._finish_oldest()
        started = time.perf_counter()
        copies = [(path, to_record(payload), then) for path, payload, then in items]
        copied_s = time.perf_counter() - started
        group = [(path, copy) for path, copy, _ in copies]
        callbacks = [then for _, _, then in copies if then is not None]
        self._pending.append((self._pool.submit(_write_in_background, group), _run_all(callbacks), copied_s))

    def poll(self) -> None:
        """Run the callbacks of the writes that are done; raise a failed write's CheckpointError."""
        while self._pending and self._pending[0][0].done():
            self._finish_oldest()

    def flush(self) -> None:
        """Wait for every write; afterwards every file given so far is on disk."""
        while self._pending:
            self._finish_oldest()

    def close(self) -> None:
        """Finish what was given (a write of a completed epoch is worth keeping even while failing)."""
        try:
            for future, _, _ in self._pending:
                future.exception()  # wait; errors were or will be reported by flush/poll
        finally:
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _finish_oldest(self) -> None:
        future, then, copied_s = self._pending.popleft()
        self.last_cost_s = copied_s + future.result()
        if then is not None:
            then()
