"""What the four training loops share: the task wrapper that timestamps them, the batches in the
engine's order as a ``DataLoader`` (for the peers), and the weights fingerprint.

The task wrapper only notes the time when a loop asks for a loss or a validation (absolute
``time.time()``, so the parent can relate it to when it started the process), and can freeze the
process just before step N+1 -- after exactly N optimizer steps -- so the parent can ``kill -9`` it
at a known point.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from benchmarks.perf.probe import WrappedTask
from mi_pipeline.engine.task import Batch, TrainTask
from mi_pipeline.engine.trainer import batch_seed, epoch_order


class StampedTask(WrappedTask):
    """The real task; notes (wall, cpu) at every loss call and around every validation.

    ``freeze_after=N``: the loss call of step N+1 writes ``marker`` and waits until ``release()``
    (a signal arrived) -- or forever, for a ``kill -9``. ``trace``: one line per loss call, appended
    as it happens (the count survives a kill)."""

    def __init__(self, task: TrainTask, freeze_after: int | None = None, marker: Path | None = None,
                 release: Callable[[], bool] = lambda: False, trace: Path | None = None,
                 syncs: Callable[[], int] = lambda: 0) -> None:
        super().__init__(task)
        self.sync_count = syncs
        self.syncs: list[int] = []  # host reads of tensor values so far, at each loss call (benchmarks/peers/syncs.py)
        self.freeze_after, self.marker, self.release, self.trace = freeze_after, marker, release, trace
        self.losses: list[tuple[float, float]] = []
        self.validations: list[tuple[float, float, float, float]] = []  # wall, cpu at start; wall, cpu at end
        self.threads: list[int] = []
        self.saves: list[tuple[float, float, float]] = []  # (start, wall s, cpu s) of each checkpoint call
        self.writes: list[tuple[float, float]] = []  # ours: background writes (start, wall s to durable)

    def timed(self, fn: Callable[..., Any], sink: list | None = None) -> Callable[..., Any]:
        """``fn`` that notes how long the calling thread was inside it (the training loop's stall)."""
        sink = self.saves if sink is None else sink

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.time(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.time()
                sink.append((start, end - start, time.process_time() - cpu) if sink is self.saves else (start, end - start))

        return wrapper

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.freeze_after is not None and len(self.losses) == self.freeze_after:
            assert self.marker is not None
            self.marker.write_text(f"{os.getpid()} {len(self.losses)}\n")
            while not self.release():  # exactly ``freeze_after`` steps are done; the parent signals or kills
                time.sleep(0.05)
        if self.trace is not None:  # steps started, readable even after a kill
            with open(self.trace, "a", encoding="utf-8") as handle:
                handle.write(f"{time.time():.6f}\n")
        if not self.threads:
            self.threads.append(torch.get_num_threads())
        self.losses.append((time.time(), time.process_time()))
        self.syncs.append(self.sync_count())
        return self.task.loss(model, batch)

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        start = (time.time(), time.process_time())
        metrics = self.task.validate(model, device)
        self.validations.append((*start, time.time(), time.process_time()))
        return metrics


def num_batches(task: TrainTask, batch_size: int) -> int:
    return math.ceil(task.num_train_samples() / batch_size)


def engine_batch(task: TrainTask, seed: int, batch_size: int, epoch: int, index: int) -> Batch:
    """Batch ``index`` of epoch ``epoch`` (0-based) exactly as ``engine.trainer.BatchBuilder`` makes it."""
    order = epoch_order(task.num_train_samples(), seed, epoch)
    indices = order[index * batch_size:(index + 1) * batch_size]
    return task.make_batch(indices, torch.Generator().manual_seed(batch_seed(seed, epoch, index)), torch.device("cpu"))


class EngineOrder(Dataset):
    """Item ``i`` is batch ``i`` of the current epoch in the engine's order (``batch_size=None`` loaders).
    The epoch is set through the sampler's ``set_epoch``, as Lightning does for every sampler that has
    one and as a MONAI handler does at each EPOCH_STARTED."""

    def __init__(self, task: TrainTask, seed: int, batch_size: int) -> None:
        self.task, self.seed, self.batch_size = task, seed, batch_size
        self.epoch = 0
        self._order: tuple[int, list[int]] | None = None

    def __len__(self) -> int:
        return num_batches(self.task, self.batch_size)

    def __getitem__(self, index: int) -> Batch:
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, epoch_order(self.task.num_train_samples(), self.seed, self.epoch))
        indices = self._order[1][index * self.batch_size:(index + 1) * self.batch_size]
        generator = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, index))
        return self.task.make_batch(indices, generator, torch.device("cpu"))


class EpochSampler(Sampler[int]):
    """0, 1, ..., n-1; ``set_epoch`` tells the dataset which epoch's order to serve."""

    def __init__(self, dataset: EngineOrder) -> None:
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        return iter(range(len(self.dataset)))


def engine_order_loader(task: TrainTask, seed: int, batch_size: int) -> DataLoader:
    dataset = EngineOrder(task, seed, batch_size)
    return DataLoader(dataset, batch_size=None, sampler=EpochSampler(dataset), num_workers=0)


def weights_sha256(model: nn.Module) -> str:
    """Fingerprint of the weights: names, dtypes, shapes and raw bytes, in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()
