"""The training loop shared by every stage: per-epoch atomic checkpoints and bit-exact resume.

Exactness comes from three rules (see shared notes on MONAI/torch determinism):
1. data order and augmentation are pure functions of (seed, epoch, batch): nothing about the data
   pipeline needs saving, and skipping to the middle of an epoch is free;
2. the checkpoint holds every other piece of state: model, optimizer, scheduler, grad scaler,
   counters, best metric, the weight average (``optim.ema_decay``, engine/ema.py) and the global
   RNG states (restored last, after everything is built);
3. threads are pinned and deterministic algorithms are on (set up by ``determinism``).

The ``performance`` switches (engine/performance.py) keep these rules: batches may be built ahead in
background workers because their content depends only on (seed, epoch, batch); the model keeps its
un-compiled module for checkpoints; amp's GradScaler is part of the saved state.

Two things keep a GPU busy: the loop never waits for the device per step (losses stay on the
device and are read, finite-checked and shown every ``SYNC_EVERY`` steps, one copy for all), and
checkpoints are written in the background. What a kill -9 can lose is bounded by a mid-epoch
``last.pth`` (``performance.checkpoint_every_s`` / ``checkpoint_every_steps``): the same exact
position a stop signal saves, so resuming from it is bit-exact.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mi_pipeline.config import OptimConfig, PerformanceConfig, resolve_performance
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine import performance
from mi_pipeline.engine.checkpoint_writer import CheckpointWriter
from mi_pipeline.engine.distributed import World, wrap_model
from mi_pipeline.engine.ema import WeightAverage
from mi_pipeline.engine.runlog import StageLog
from mi_pipeline.engine.task import TrainTask
from mi_pipeline.errors import CheckpointError
from mi_pipeline.fsio import remove_stale_temps


@dataclass
class TrainState:
    epoch: int = 0  # epochs fully completed
    batch: int = 0  # batches completed inside epoch ``epoch`` (non-zero only after a mid-epoch stop)
    step: int = 0  # optimizer steps in total
    best_metric: float | None = None
    best_epoch: int | None = None
    recent_metrics: list[float] = field(default_factory=list)  # the last ``best_window`` epochs' metric values
    epoch_losses: list[float] = field(default_factory=list)  # this epoch's batch losses so far (train_loss)


class Interrupted(Exception):
    """Training stopped on request after saving its exact position; running it again continues."""

    def __init__(self, state: TrainState) -> None:
        super().__init__(f"stopped at epoch {state.epoch + 1}, batch {state.batch}; state saved")
        self.state = state


@dataclass
class FitContext:
    """Everything the loop needs that is not the task itself."""

    ckpt_dir: Path
    log: StageLog
    seed: int
    config_hash: str
    config: dict[str, Any]
    device: torch.device
    upstream: dict[str, str] = field(default_factory=dict)  # fingerprints of the models this stage builds on
    restart: bool = False  # ignore (and set aside) an existing last.pth
    force: bool = False  # resume even if the config hash or upstream models changed
    accept_config_change: bool = False  # the caller checked last.pth's other config hash is one to continue
                                        # through (only the epoch count went up); upstream is still checked
    world: World = field(default_factory=World)  # data-parallel ranks; rank 0 alone writes files
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)  # speed switches; a set optim.amp overrides .amp
    stop_requested: Callable[[], bool] = lambda: False
    on_epoch: Callable[[TrainState, dict[str, float]], None] = lambda state, metrics: None
    start_from: StartFrom | None = None  # decided by the caller from its one read of last.pth; None: fit
                                         # reads and checks last.pth itself (the engine used on its own)


@dataclass(frozen=True)
class StartFrom:
    """Where training starts, as the caller decided: ``last.pth``'s content to continue from, or None
    for epoch 1 (a restart, whose old ``last.pth`` the caller has already set aside)."""

    payload: dict[str, Any] | None


SYNC_EVERY = 50  # steps between host reads of the losses; a NaN fails the run at most this many steps late
SAVE_SHARE = 0.01  # a mid-epoch save may cost at most 1 % of training: its interval stretches to cost / SAVE_SHARE


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + batch) % (2**63 - 1)


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(batch_seed(seed, epoch, -1))
    return torch.randperm(num_samples, generator=generator).tolist()


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """LR multiplier from the epoch number alone (nnU-Net style): less state to lose."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return 1.0


def fit(task: TrainTask, optim: OptimConfig, ctx: FitContext) -> TrainState:
    """Train ``task`` to ``optim.epochs`` epochs, resuming from ``last.pth`` when present.

    With several ranks, every rank runs this loop on its shard of each global batch (DDP averages
    the gradients) and all ranks stop at the same batch; only rank 0 validates and writes files.
    """
    log, world = ctx.log, ctx.world
    perf = resolve_performance(ctx.performance, optim)
    task.setup(ctx.device)
    if world.is_main:
        for note in task.notes():
            log.info(note)
    for note in performance.apply_process_switches(perf, ctx.device):
        log.info(note)
    performance.amp_dtype(perf, ctx.device)  # an unusable amp mode fails here, before any work
    torch.manual_seed(ctx.seed)
    model = performance.to_memory_format(task.build_model(), perf, ctx.device)
    optimizer = torch.optim.AdamW(task.param_groups(model, optim.lr), weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(optim.lr_schedule, e, optim.epochs))
    scaler = performance.make_grad_scaler(perf, ctx.device)
    upstream = ctx.upstream
    average = WeightAverage(model, optim.ema_decay) if optim.ema_decay > 0 else None
    state = _resume(ctx, model, optimizer, scheduler, scaler, upstream, optim.epochs, average)
    net = performance.compile_model(wrap_model(model, world, ctx.device), perf, ctx.device)
    if world.distributed:
        log.info(f"data parallel: rank {world.rank} of {world.size}")
    if state.epoch >= optim.epochs:
        log.info(f"already trained: {state.epoch}/{optim.epochs} epochs, "
                 f"best {chosen_metric_name(task.metric_name, optim.best_window)}={state.best_metric}")
        log.close()
        return state
    if perf != PerformanceConfig():
        log.info(performance.describe(perf, ctx.device))
    if average is not None:
        log.info(f"weight average (ema_decay {optim.ema_decay}): validation and best_model.pth use the "
                 "exponential moving average of the weights")

    num_batches = math.ceil(task.num_train_samples() / optim.batch_size)
    builder = BatchBuilder(task, ctx.seed, optim.batch_size, world)
    writer = CheckpointWriter(background=perf.async_checkpoint)
    saver = _Saver(ctx, writer, model, optimizer, scheduler, scaler, upstream, optim.epochs, perf, optim.best_window,
                   average)
    try:
        with performance.BatchStream(builder, builder.positions(state, optim.epochs), perf, ctx.device) as stream:
            while state.epoch < optim.epochs:
                started = time.monotonic()
                losses = _train_epoch(task, net, optim, perf, ctx, state, builder, stream, optimizer, scaler, saver,
                                      num_batches)
                metrics = _end_epoch(task, model if average is None else average.module, ctx, state, scheduler,
                                     losses, started)
                if world.is_main:
                    saver.record_epoch(task, state, metrics)
                world.barrier()
                if world.any(ctx.stop_requested()) and state.epoch < optim.epochs:
                    writer.flush()
                    log.info(f"stop requested: stopping after epoch {state.epoch} (checkpoint saved)")
                    raise Interrupted(state)
        writer.flush()
    finally:
        writer.close()
        log.close()
    return state


def _train_epoch(task: TrainTask, net: torch.nn.Module, optim: OptimConfig, perf: PerformanceConfig, ctx: FitContext,
                 state: TrainState, builder: BatchBuilder, stream: performance.BatchStream,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, saver: _Saver,
                 num_batches: int) -> list[float]:
    """The rest of epoch ``state.epoch`` from batch ``state.batch``; returns the epoch's batch losses.
    A stop request saves the exact position (mid-epoch) and raises Interrupted."""
    net.train()
    losses = LossReader(state.epoch_losses)  # saved with a mid-epoch stop: the resumed epoch's train_loss is the same
    bar = ctx.log.progress(num_batches, state.batch, f"epoch {state.epoch + 1}/{optim.epochs}")
    for batch_index in range(state.batch, num_batches):
        if builder.keeps(batch_index):  # a remainder too small to give every rank a sample is dropped
            batch = stream.next((state.epoch, batch_index))
            losses.add(batch_index, _step(task, net, batch, optimizer, scaler, optim, perf, ctx.device, batch_index))
            state.step += 1
            if saver.average is not None:
                saver.average.update(state.step)
        state.batch = batch_index + 1
        bar.update(losses.last())
        saver.writer.poll()  # epoch lines and record updates of checkpoints now on disk
        if ctx.world.is_main and state.batch < num_batches and saver.mid_epoch_due(state):
            losses.read()  # a non-finite loss fails here, before its weights can reach last.pth
            saver.mid_epoch(state)
        if ctx.world.any(ctx.stop_requested()) and state.batch < num_batches:
            losses.read()
            bar.close()
            stream.close()
            if ctx.world.is_main:
                saver.last(state, {})
                saver.writer.flush()
                ctx.log.info(f"stop requested: saved exact position (epoch {state.epoch + 1}, "
                             f"batch {state.batch}/{num_batches})")
            ctx.world.barrier()
            raise Interrupted(state)
    losses.read()
    bar.close()
    return losses.values


class LossReader:
    """The epoch's step losses: kept on the device as they come and read to the host every
    ``SYNC_EVERY`` steps in one copy, instead of a ``loss.item()`` (a GPU pipeline drain) per step.
    The finite check happens at the read and names the first bad batch; a save or a stop reads
    first, so no checkpoint ever holds weights stepped past a non-finite loss."""

    def __init__(self, values: list[float], every: int | None = None) -> None:
        self.values, self.every = values, every or SYNC_EVERY
        self._pending: list[tuple[int, torch.Tensor]] = []

    def add(self, batch_index: int, loss: torch.Tensor) -> None:
        self._pending.append((batch_index, loss))
        if len(self._pending) >= self.every:
            self.read()

    def read(self) -> None:
        """One host copy for every pending loss; FloatingPointError at the first non-finite one."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for (index, _), value in zip(pending, torch.stack([loss for _, loss in pending]).tolist(), strict=True):
            if not math.isfinite(value):
                raise FloatingPointError(f"loss is {value} at batch {index + 1}")
            self.values.append(value)

    def last(self) -> float | None:
        """The newest loss read so far (what a progress line shows; no sync); None before the first read."""
        return self.values[-1] if self.values else None


class BatchBuilder:
    """Builds the batch at (epoch, batch index) on the CPU: a pure function of them and the seed, so
    the main loop or a background worker may build it, at any time, with the same result."""

    def __init__(self, task: TrainTask, seed: int, batch_size: int, world: World) -> None:
        self.task, self.seed, self.batch_size, self.world = task, seed, batch_size, world
        self.num_samples = task.num_train_samples()
        self._order: tuple[int, list[int]] | None = None  # (epoch, order) of the last epoch built

    def keeps(self, batch_index: int) -> bool:
        """False for a last batch too small to give every rank a sample (it is skipped)."""
        return min(self.batch_size, self.num_samples - batch_index * self.batch_size) >= self.world.size

    def positions(self, state: TrainState, epochs: int) -> list[performance.Position]:
        """Every (epoch, batch) still to train from ``state``, in order."""
        num_batches = math.ceil(self.num_samples / self.batch_size)
        return [(epoch, index) for epoch in range(state.epoch, epochs)
                for index in range(state.batch if epoch == state.epoch else 0, num_batches) if self.keeps(index)]

    def __call__(self, epoch: int, batch_index: int) -> dict[str, torch.Tensor]:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.num_samples, self.seed, epoch))
        order = self._order[1]
        indices = order[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
        generator = torch.Generator().manual_seed(batch_seed(self.seed, epoch, batch_index))
        return self.task.make_batch(self.world.shard(indices), generator, torch.device("cpu"))


def _step(task: TrainTask, net: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
          scaler: torch.amp.GradScaler, optim: OptimConfig, perf: PerformanceConfig, device: torch.device,
          batch_index: int) -> torch.Tensor:
    """One optimizer step; returns the loss, detached and still on the device (no host sync here:
    LossReader checks it is finite, ``batch_index`` is for the compile error's context only)."""
    try:
        with performance.autocast(perf, device):
            loss, _parts = task.loss(net, batch)
    except Exception as exc:
        if perf.compile and performance.is_compile_error(exc):
            raise RuntimeError(f"torch.compile failed on the {task.name} model ({performance.first_line(exc)}); "
                               "set performance.compile: false") from None
        raise
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
    if optim.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), optim.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def _end_epoch(task: TrainTask, model: torch.nn.Module, ctx: FitContext, state: TrainState,
               scheduler: torch.optim.lr_scheduler.LRScheduler, losses: list[float], started: float) -> dict[str, float]:
    """Validate ``model`` (rank 0; the weight average when there is one), advance the schedule and the
    counters; return the epoch's metrics."""
    metrics: dict[str, float] = {}
    if ctx.world.is_main:
        model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in task.validate(model, ctx.device).items()}
        if task.metric_name not in metrics:
            raise KeyError(f"{task.name}.validate() did not return its metric {task.metric_name!r}")
    lr = scheduler.get_last_lr()[0]
    scheduler.step()
    state.epoch += 1
    state.batch = 0
    train_loss = float(sum(losses)) / len(losses) if losses else float("nan")
    state.epoch_losses = []
    return {"train_loss": train_loss, "lr": float(lr), "seconds": round(time.monotonic() - started, 3), **metrics}


def _is_better(value: float | None, best: float | None, higher_is_better: bool) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def window_mean(recent: list[float]) -> float | None:
    """The metric that chooses ``best_model.pth``: the mean over the last ``best_window`` epochs (fewer at
    the start), so one lucky epoch on a handful of validation subjects does not win; None when any value
    in the window is missing or not finite (such a window cannot be best)."""
    if not recent or not all(math.isfinite(v) for v in recent):
        return None
    return sum(recent) / len(recent)


def chosen_metric_name(metric_name: str, best_window: int) -> str:
    """The name of what chooses ``best_model.pth``: the metric, or its mean over ``best_window`` epochs
    (the metrics record carries it under this name; status shows the best under it, not the raw name)."""
    return f"{metric_name}_mean{best_window}" if best_window > 1 else metric_name


def _epoch_line(state: TrainState, epochs: int, metric_name: str, metrics: dict[str, float], improved: bool) -> str:
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("lr", "seconds"))
    mark = " (best)" if improved else ""
    return f"epoch {state.epoch}/{epochs} {shown} [{metrics['seconds']:.1f}s]{mark}"


# --- checkpoints ------------------------------------------------------------------------------


class _Saver:
    """The stage's two checkpoint files, written through the writer (rank 0 only)."""

    def __init__(self, ctx: FitContext, writer: CheckpointWriter, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 scaler: torch.amp.GradScaler, upstream: dict[str, str], epochs: int,
                 perf: PerformanceConfig | None = None, best_window: int = 1,
                 average: WeightAverage | None = None) -> None:
        self.ctx, self.writer, self.model, self.optimizer = ctx, writer, model, optimizer
        self.best_window, self.average = best_window, average
        self.scheduler, self.scaler, self.upstream, self.epochs = scheduler, scaler, upstream, epochs
        perf = perf or PerformanceConfig()
        self.every_s, self.every_steps = perf.checkpoint_every_s, perf.checkpoint_every_steps
        self.saved_at = time.monotonic()  # the last last.pth handed to the writer (epoch end or mid-epoch)

    def mid_epoch_due(self, state: TrainState) -> bool:
        """Time for a mid-epoch last.pth: every ``every_steps`` steps, or ``every_s`` seconds after the
        last save, stretched to 1/SAVE_SHARE times what the previous save cost (so saving stays < 1 %
        of training on any machine, whatever the checkpoint's size)."""
        if self.every_steps and state.step % self.every_steps == 0:
            return True
        interval = max(self.every_s, self.writer.last_cost_s / SAVE_SHARE)
        return bool(self.every_s) and time.monotonic() - self.saved_at >= interval

    def mid_epoch(self, state: TrainState) -> None:
        """The exact position, in the background; a line in the log once it is durable."""
        where = f"epoch {state.epoch + 1}, batch {state.batch}, step {state.step}"
        self.writer.save(self.ctx.ckpt_dir / ckpt.LAST, self.last_payload(state, {}),
                         lambda: self.ctx.log.info(f"mid-epoch last.pth saved ({where})"))
        self.saved_at = time.monotonic()

    def record_epoch(self, task: TrainTask, state: TrainState, metrics: dict[str, float]) -> None:
        """The metrics line, then best, then last: last.pth is the commit point. A crash before it is
        durable redoes the epoch (resume drops metrics lines past last.pth's epoch) and reaches the same
        files; appending the metrics after last.pth would lose the epoch's line to a crash between the
        two. The epoch's log line and ``on_epoch`` (the progress record) wait until last.pth is on disk."""
        ctx = self.ctx
        if self.best_window > 1:  # the choice is the window's mean; the value is logged beside the epoch's own
            value = metrics.get(task.metric_name)
            state.recent_metrics = [*state.recent_metrics, math.nan if value is None else value][-self.best_window:]
            chosen = window_mean(state.recent_metrics)
            if chosen is not None:
                metrics[chosen_metric_name(task.metric_name, self.best_window)] = chosen
        else:
            chosen = metrics.get(task.metric_name)
        improved = _is_better(chosen, state.best_metric, task.higher_is_better)
        if improved:
            state.best_metric, state.best_epoch = chosen, state.epoch
        record = {"epoch": state.epoch, "step": state.step, "best": improved, **metrics}
        ctx.log.epoch_metrics(record)
        done = dataclasses.replace(state, epoch_losses=[])
        line = _epoch_line(done, self.epochs, task.metric_name, metrics, improved)

        warning = task.baseline_warning(metrics) if state.epoch >= self.epochs else None  # early epochs may trail it

        def committed() -> None:
            ctx.log.info(line)
            ctx.log.epoch_committed(record)
            if warning:
                ctx.log.info(f"WARNING: {warning}")
            ctx.on_epoch(done, metrics)

        best = [(ctx.ckpt_dir / ckpt.BEST, self.best_payload(task, state, metrics), None)] if improved else []
        self.saved_at = time.monotonic()
        self.writer.save_all([*best, (ctx.ckpt_dir / ckpt.LAST, self.last_payload(state, metrics), committed)])

    def last(self, state: TrainState, metrics: dict[str, float]) -> None:
        """Only last.pth (a stop in the middle of an epoch: its exact position)."""
        self.writer.save(self.ctx.ckpt_dir / ckpt.LAST, self.last_payload(state, metrics))

    def best_payload(self, task: TrainTask, state: TrainState, metrics: dict[str, float]) -> dict[str, Any]:
        """The weights validation scored (the average when there is one): what inference loads unchanged."""
        ctx = self.ctx
        model = self.model if self.average is None else self.average.module
        return {
            "kind": "best", "stage": task.name, "model": model.state_dict(), "epoch": state.epoch,
            "metric_name": task.metric_name, "metric": metrics[task.metric_name], "metrics": metrics,
            "config_hash": ctx.config_hash, "config": ctx.config, "upstream": self.upstream,
            "facts": task.model_facts(),
        }

    def last_payload(self, state: TrainState, metrics: dict[str, float]) -> dict[str, Any]:
        """Everything an exact resume needs: the raw weights training steps, and the average beside them."""
        ctx = self.ctx
        payload = {
            "kind": "last", "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "state": dataclasses.asdict(state), "epochs": self.epochs, "finished": state.epoch >= self.epochs,
            "config_hash": ctx.config_hash, "upstream": self.upstream, "metrics": metrics, "rng": ckpt.capture_rng(),
        }
        if self.average is not None:
            payload["ema"] = self.average.state_dict()
        return payload


def _resume(ctx: FitContext, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
            upstream: dict[str, str], epochs: int, average: WeightAverage | None = None) -> TrainState:
    path = ctx.ckpt_dir / ckpt.LAST
    if ctx.world.is_main:  # temp files of a process killed mid-write (this stage has one writer: us)
        for target in (path, ctx.ckpt_dir / ckpt.BEST, ctx.log.metrics_path):
            remove_stale_temps(target)
    if ctx.start_from is not None:
        payload = ctx.start_from.payload
        if payload is None:
            return _start_at_epoch_one(ctx, "starting from scratch (restart requested)" if ctx.restart
                                       else "no last.pth: starting at epoch 1")
    elif ctx.restart:
        if ctx.world.is_main:
            set_aside(path, "restart")
        ctx.world.barrier()  # no rank may read last.pth while rank 0 moves it
        return _start_at_epoch_one(ctx, "starting from scratch (restart requested)")
    elif not path.exists():
        return _start_at_epoch_one(ctx, "no last.pth: starting at epoch 1")
    else:
        payload = ckpt.load_checkpoint(path, required=RESUME_KEYS)
        check_resumable(path, payload, ctx.config_hash, upstream, force=ctx.force,
                        accept_config_change=ctx.accept_config_change)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    _load_scaler(ctx, scaler, payload.get("scaler") or {})
    if average is not None:
        _load_average(ctx, average, payload.get("ema"))
    state = TrainState(**payload["state"])
    ckpt.restore_rng(payload["rng"])  # last: building things above may consume RNG
    if ctx.world.is_main:
        ctx.log.keep_metrics_through(state.epoch)
    where = f"epoch {state.epoch + 1}" + (f", batch {state.batch + 1}" if state.batch else "")
    if state.epoch < epochs:
        ctx.log.info(f"resuming from last.pth at {where} (completed epochs: {state.epoch}, step {state.step})")
    return state


RESUME_KEYS = ("model", "optimizer", "scheduler", "state", "rng", "config_hash")


def check_resumable(path: Path, payload: dict[str, Any], config_hash: str, upstream: dict[str, str], *,
                    force: bool, accept_config_change: bool) -> None:
    """May training continue from this ``last.pth``? CheckpointError saying what to do when not."""
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    if payload["config_hash"] != config_hash and not (force or accept_config_change):
        raise CheckpointError(
            f"{path}: written with config hash {payload['config_hash']}, the current config hashes to "
            f"{config_hash}; resume with --force to continue under the new config, or use --mode fresh")
    if payload.get("upstream", {}) != upstream and not force:
        raise CheckpointError(
            f"{path}: trained on different upstream models ({payload.get('upstream')} vs {upstream}); "
            "retrain this stage (train --restart) or pass --force")


def _start_at_epoch_one(ctx: FitContext, why: str) -> TrainState:
    if ctx.world.is_main:  # lines a run killed before its first last.pth appended: epoch 1 is redone
        ctx.log.keep_metrics_through(0)
    ctx.log.info(why)
    return TrainState()


def _load_scaler(ctx: FitContext, scaler: torch.amp.GradScaler, saved: dict[str, Any]) -> None:
    """fp16 loss-scale state continues exactly; a scaler that was off when saved (CPU, bf16) or is
    off now (resumed on CPU) has nothing to carry over."""
    if scaler.is_enabled() and saved:
        scaler.load_state_dict(saved)
    elif scaler.is_enabled():
        ctx.log.info("last.pth has no fp16 loss-scale state (it was saved without fp16 amp): starting a fresh GradScaler")


def _load_average(ctx: FitContext, average: WeightAverage, saved: dict[str, Any] | None) -> None:
    """The weight average continues exactly; a last.pth saved without one (ema_decay was 0, or an older
    version) starts it from the weights just loaded, and the log says so."""
    if saved is not None:
        average.load_state_dict(saved)
        return
    average.reset()
    ctx.log.info("last.pth has no weight average (it was saved without ema_decay): "
                 "the average starts from the current weights")


def set_aside(path: Path, why: str) -> Path | None:
    """Move a file out of the way instead of deleting work: ``last.pth`` -> ``last.pth.<why>``.

    One copy per reason is kept (a newer one replaces it), so repeated restarts cannot fill the disk.
    """
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.{why}")
    os.replace(path, target)
    return target
