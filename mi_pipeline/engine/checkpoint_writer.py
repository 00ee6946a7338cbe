"""Checkpoint writes in the background: the training loop waits for an in-memory copy, not the disk.

Why: an atomic write pays fsyncs (file + folder) on top of serialising; on a quiet local disk that
is ~15 ms per file, on a busy parallel filesystem it can be seconds, every epoch. The loop hands
the writer a snapshot (every tensor copied to CPU memory, so the next optimizer step may change
the originals) and goes on; one thread writes the files, one at a time, in the order given, each
through ``save_checkpoint`` (temp file, fsync, rename, folder fsync: crash-safety is unchanged).

What must not run ahead of the disk: a callback given with a write (the epoch's log line, the
progress record) runs on the caller's thread only once that file is durable, so nothing outside
the checkpoint folder ever claims an epoch that a crash could still take back. A failed write
(disk full) surfaces as the same one-line CheckpointError at the next ``poll``/``flush``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from mi_pipeline.engine.checkpoint import save_checkpoint

MAX_PENDING = 1  # one save_all (an epoch's best + last) in flight; a slower disk makes the loop wait instead of piling up copies


def snapshot(value: Any) -> Any:
    """``value`` with every tensor copied to CPU memory (containers rebuilt, other leaves shared)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: snapshot(item) for key, item in value.items()}
    if isinstance(value, list):
        return [snapshot(item) for item in value]
    if isinstance(value, tuple):
        return tuple(snapshot(item) for item in value)
    return value


def _write_in_order(items: list[tuple]) -> None:
    """Write each (path, payload[, then]) in turn; the first failure stops the rest."""
    for path, payload, *then in items:
        save_checkpoint(path, payload)
        if then and then[0] is not None:
            then[0]()


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
        self._pending: deque[tuple[Future[None], Callable[[], None] | None]] = deque()

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
            _write_in_order(items)
            return
        while self._pending and len(self._pending) + 1 > MAX_PENDING:
            self._finish_oldest()
        copies = [(path, snapshot(payload), then) for path, payload, then in items]
        group = [(path, copy) for path, copy, _ in copies]
        callbacks = [then for _, _, then in copies if then is not None]
        self._pending.append((self._pool.submit(_write_in_order, group), _run_all(callbacks)))

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
            for future, _ in self._pending:
                future.exception()  # wait; errors were or will be reported by flush/poll
        finally:
            self._pending.clear()
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def _finish_oldest(self) -> None:
        future, then = self._pending.popleft()
        future.result()
        if then is not None:
            then()
