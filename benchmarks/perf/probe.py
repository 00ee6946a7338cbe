"""Instrumented runs of the real engine: what ``fit`` costs per training step, seen from inside.

``ProbedTask`` wraps a stage's real task and only notes the time when the engine asks it for a batch,
a loss or a validation; the engine loop itself is untouched. A step is "build its batch, forward,
backward, optimizer step, the loop's own bookkeeping", i.e. from one batch request to the next (or to
the epoch's validation). Validation and the per-epoch checkpoint fall between steps and are reported
on their own.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import io
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count, pairwise
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.perf.timing import Stamp, median, stamp, sync
from mi_pipeline.config import OptimConfig
from mi_pipeline.engine.runlog import BatchProgress, StageLog
from mi_pipeline.engine.task import Batch, TrainTask
from mi_pipeline.engine.trainer import (
    FitContext,
    Interrupted,
    batch_seed,
    epoch_order,
    fit,
)


class QuietLog(StageLog):
    """Writes train.log but not stderr, so the benchmark's own output stays readable; progress is the
    plain line a batch job gets (no tqdm bar), so the engine is measured as it runs under SLURM."""

    def info(self, message: str) -> None:
        if self.files:
            with open(self.train_log, "a", encoding="utf-8") as handle:
                handle.write(f"[{self.stage}] {message}\n")

    def progress(self, total: int, initial: int, desc: str) -> BatchProgress:
        with contextlib.redirect_stderr(io.StringIO()):  # not a terminal: no bar
            return BatchProgress(self, total, initial, desc)


class WrappedTask(TrainTask):
    """A stage's real task behind a subclass that only watches it: every call is forwarded, and
    ``setup`` runs once however many times the loop under test calls it."""

    def __init__(self, task: TrainTask) -> None:
        self.task = task
        self.name, self.metric_name, self.higher_is_better = task.name, task.metric_name, task.higher_is_better
        self._ready = False

    def setup(self, device: torch.device) -> None:
        if not self._ready:
            self.task.setup(device)
            self._ready = True

    def build_model(self) -> nn.Module:
        return self.task.build_model()

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        return self.task.param_groups(model, lr)

    def num_train_samples(self) -> int:
        return self.task.num_train_samples()

    def make_batch(self, indices: list[int], generator: torch.Generator, device: torch.device) -> Batch:
        return self.task.make_batch(indices, generator, device)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(model, batch)

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return self.task.validate(model, device)


class ProbedTask(WrappedTask):
    """The real task plus timestamps of its batch, loss and validation calls."""

    def __init__(self, task: TrainTask) -> None:
        super().__init__(task)
        self.reset()

    def reset(self) -> None:
        self.builds: list[Stamp] = []
        self.losses: list[Stamp] = []
        self.validations: list[tuple[Stamp, Stamp]] = []

    def stop_after(self, steps: int) -> Callable[[], bool]:
        """A ``stop_requested`` for ``fit``: stop (saving the position) once ``steps`` steps ran."""
        return lambda: len(self.losses) >= steps

    def make_batch(self, indices: list[int], generator: torch.Generator, device: torch.device) -> Batch:
        self.builds.append(stamp())
        return self.task.make_batch(indices, generator, device)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        self.losses.append(stamp())
        return self.task.loss(model, batch)

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        start = stamp()
        metrics = self.task.validate(model, device)
        self.validations.append((start, stamp()))
        return metrics


@dataclass(frozen=True)
class EngineTimes:
    """One instrumented ``fit``, in seconds: the timed steady-state steps (wall and process CPU time),
    the first steps after a validation (timed apart: the validation and the checkpoint leave caches
    and the allocator cold, so that step pays part of the epoch boundary), the validations, and the
    epoch ends (validation end -> next step: best/last checkpoints, metrics line)."""

    steps_s: list[float]
    steps_cpu_s: list[float]
    after_validation_s: list[float]
    validations_s: list[float]
    epoch_ends_s: list[float]

    @property
    def step_s(self) -> float:
        """Median step: robust to the moments another process took the CPU."""
        return median(self.steps_s)


def engine_times(probe: ProbedTask, warmup: int, steps: int) -> EngineTimes:
    """Cut the probe's timestamps into steps. A step starts at its batch request (at its loss call when
    batches are built ahead by workers in other processes) and ends at the next step's start or at the
    epoch's validation, whichever comes first. The first ``warmup`` steps are dropped, then ``steps``
    are kept."""
    starts = probe.builds if len(probe.builds) >= len(probe.losses) else probe.losses
    starts = starts[:len(probe.losses)]
    events = sorted(starts + [v0 for v0, _ in probe.validations])
    walls = [wall for wall, _ in events]
    start_walls = [wall for wall, _ in starts]
    next_step = [bisect.bisect_right(start_walls, v1[0]) for _, v1 in probe.validations]  # first step after each
    after = set(next_step)
    durations = []
    for wall, cpu in starts:
        k = bisect.bisect_right(walls, wall)
        if k == len(events):
            break
        durations.append((events[k][0] - wall, events[k][1] - cpu))
    timed = list(enumerate(durations))[warmup:warmup + steps]
    steady = [d for i, d in timed if i not in after] or [d for _, d in timed]  # one batch per epoch: no steady step
    return EngineTimes(steps_s=[w for w, _ in steady], steps_cpu_s=[c for _, c in steady],
                       after_validation_s=[d[0] for i, d in timed if i in after],
                       validations_s=[v1[0] - v0[0] for v0, v1 in probe.validations],
                       epoch_ends_s=[start_walls[k] - v1[0] for k, (_, v1) in zip(next_step, probe.validations)
                                     if k < len(starts)])


def run_engine(probe: ProbedTask, optim: OptimConfig, folder: Path, device: torch.device, seed: int, warmup: int,
               steps: int, **ctx_extra: Any) -> EngineTimes:
    """``fit`` from scratch for ``warmup + steps`` timed steps (plus one that closes the last), then stop."""
    probe.setup(device)  # once: fit's own call is then free, and the sample count is known
    probe.reset()
    shutil.rmtree(folder, ignore_errors=True)
    num_batches = math.ceil(probe.num_train_samples() / optim.batch_size)
    optim = dataclasses.replace(optim, epochs=math.ceil((warmup + steps + 1) / num_batches) + 1)
    ctx = FitContext(ckpt_dir=folder / "checkpoints", log=QuietLog(folder / "logs", probe.name), seed=seed,
                     config_hash="bench", config={}, device=device,
                     stop_requested=probe.stop_after(warmup + steps + 1), **ctx_extra)
    try:
        fit(probe, optim, ctx)
    except Interrupted:
        pass
    sync(device)
    return engine_times(probe, warmup, steps)


def positions(task: TrainTask, batch_size: int, seed: int, limit: int) -> Iterator[tuple[int, int, int, list[int]]]:
    """The first ``limit`` steps' (step, epoch, batch index, sample indices), in the engine's order."""
    num_samples = task.num_train_samples()
    num_batches = math.ceil(num_samples / batch_size)
    step = 0
    for epoch in count():
        order = epoch_order(num_samples, seed, epoch)
        for b in range(num_batches):
            if step == limit:
                return
            yield step, epoch, b, order[b * batch_size:(b + 1) * batch_size]
            step += 1


@dataclass(frozen=True)
class StepTimes:
    wall_s: list[float]
    cpu_s: list[float]


def manual_steps(task: TrainTask, optim: OptimConfig, device: torch.device, seed: int, warmup: int,
                 steps: int, at_start: Callable[[], None] | None = None) -> StepTimes:
    """The baseline: a minimal hand-written loop over the same model, batches and optimizer
    (build batch, forward + loss, backward, step); the wall and CPU seconds of each steady-state step.
    ``at_start`` runs inside the first timed step (what a checkpoint save costs the steps after it).

    On CUDA nothing inside the loop waits for the GPU (as a minimal loop would not), so only the
    window is timed and every step gets the window's mean.
    """
    torch.manual_seed(seed)
    model = task.build_model().to(device)
    optimizer = torch.optim.AdamW(task.param_groups(model, optim.lr), weight_decay=optim.weight_decay)
    model.train()
    marks: list[Stamp] = []
    for i, epoch, b, indices in positions(task, optim.batch_size, seed, warmup + steps):
        if i == warmup:
            sync(device)
        if i >= warmup:
            marks.append(stamp())
        if i == warmup and at_start is not None:
            at_start()
        batch = task.make_batch(indices, torch.Generator().manual_seed(batch_seed(seed, epoch, b)), device)
        loss, _ = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    marks.append(stamp())
    if device.type == "cuda":
        mean = [(marks[-1][k] - marks[0][k]) / steps for k in (0, 1)]
        return StepTimes([mean[0]] * steps, [mean[1]] * steps)
    return StepTimes([b[0] - a[0] for a, b in pairwise(marks)], [b[1] - a[1] for a, b in pairwise(marks)])


def calibrated_steps(step_s: float, target_s: float, minimum: int, maximum: int = 200) -> int:
    """Enough steps for a timed run of about ``target_s`` seconds."""
    if not math.isfinite(step_s) or step_s <= 0:
        return minimum
    return max(minimum, min(maximum, round(target_s / step_s)))


def median_ms(values: list[float]) -> float:
    return round(median(values) * 1000, 2)
