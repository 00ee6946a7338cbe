"""Item 2: what the per-epoch atomic checkpoint costs the training loop.

The payloads are the real ``last.pth`` and ``best_model.pth`` the trained run wrote. The engine
saves through ``CheckpointWriter`` (engine/checkpoint_writer.py): the loop copies the tensors and a
background thread writes the file atomically (temp file, fsync, rename, folder fsync). Measured,
each as alternated pairs with medians:

* ``stall``: how long the engine's save call blocks the loop (last + best), vs a plain ``torch.save``
  of the same payload in the same place (no fsync, no rename) -> ``atomic_vs_plain_ratio``;
* ``write``: the atomic write itself, start to durable (what the background thread spends), vs the
  plain save -> ``atomic_vs_plain_write_ratio`` (what it would cost a loop that waited for it);
* ``extra``: the epoch's real extra time from checkpointing: steps of the stage's real task run
  right after both saves (so the background write competes with them for the CPU, as it does in
  ``fit``) plus any wait for the write at the end, minus the same steps with no save. The share of
  an epoch is extra / (batches x engine step + validation + extra): an upper bound, since best is
  only saved in epochs that improve. ``share_1s_epoch`` is the same extra over an epoch of at least
  ``ONE_SECOND_EPOCH_S`` (the yardstick the target was set on: the demo's segmentation epoch is 0.3 s
  since its steps got faster, and a fixed cost per epoch weighs three times as much there). The
  measured extra already ends when the write is durable, so a longer epoch can only hide more of it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from benchmarks.perf.engine_overhead import task_for
from benchmarks.perf.probe import calibrated_steps, manual_steps, median_ms
from benchmarks.perf.timing import Paired, clock, median, paired, sync, timed
from benchmarks.perf.workspace import TRAINED_STAGES, Bench, filesystem_of
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.checkpoint_writer import CheckpointWriter
from mi_pipeline.layout import RunLayout

ONE_SECOND_EPOCH_S = 1.0


def validation_s(bench: Bench, stage: str, repeats: int = 3) -> float:
    """One validation pass of the stage, as the engine runs it at every epoch end."""
    task = task_for(bench, stage)
    model = task.task.build_model().to(bench.device).eval()

    def once() -> None:
        with torch.no_grad():
            task.task.validate(model, bench.device)
        sync(bench.device)

    return median([timed(once) for _ in range(repeats)])


class _Saves:
    """The stage's last + best payloads, saved the three ways the measurements compare."""

    def __init__(self, layout: RunLayout, stage: str, folder: Path) -> None:
        self.payloads = {name: ckpt.load_checkpoint(path) for name, path in
                         ((ckpt.LAST, layout.last(stage)), (ckpt.BEST, layout.best(stage)))}
        self.folder = folder
        self.writer = CheckpointWriter()

    def plain(self) -> float:
        return sum(timed(lambda: torch.save(p, self.folder / f"plain_{n}")) for n, p in self.payloads.items())

    def atomic(self) -> float:
        return sum(timed(lambda: ckpt.save_checkpoint(self.folder / n, p)) for n, p in self.payloads.items())

    def stall(self) -> float:
        """Blocking time of the engine's save of both files (previous writes done, as in steady state)."""
        self.writer.flush()
        seconds = timed(self.submit)
        self.writer.flush()
        return seconds

    def submit(self) -> None:
        """What the engine does at an epoch end: both files in one call (copies first, then writes)."""
        self.writer.save_all([(self.folder / name, payload, None) for name, payload in self.payloads.items()])


def _extra_epoch_s(bench: Bench, stage: str, saves: _Saves, steps: int, repeats: int) -> Paired:
    """Pairs of (steps alone, saves + the same steps + waiting for the write) in seconds."""
    probe = task_for(bench, stage)
    optim, seed = getattr(bench.cfg, stage), bench.cfg.seed

    def alone() -> float:
        return sum(manual_steps(probe.task, optim, bench.device, seed, 1, steps).wall_s)

    def with_save() -> float:
        saves.writer.flush()
        ran = sum(manual_steps(probe.task, optim, bench.device, seed, 1, steps, at_start=saves.submit).wall_s)
        start = clock()
        saves.writer.flush()
        return ran + (clock() - start)

    return paired(alone, with_save, repeats)


def measure_stage(bench: Bench, stage: str) -> dict[str, Any]:
    layout = RunLayout(bench.trained_run())
    folder = bench.folder("checkpoints") / stage
    folder.mkdir(parents=True, exist_ok=True)
    repeats = bench.preset.checkpoint_repeats
    saves = _Saves(layout, stage, folder)
    try:
        stall = paired(saves.plain, saves.stall, repeats)
        write = paired(saves.plain, saves.atomic, repeats)
        task = task_for(bench, stage)
        optim = getattr(bench.cfg, stage)
        num_batches = -(-task.num_train_samples() // optim.batch_size)
        step_s = bench.engine_step_s[stage]
        # enough steps to outlast the background write twice over, at most one epoch
        steps = min(num_batches, calibrated_steps(step_s, 2 * median(write.subject), 2))
        extra = _extra_epoch_s(bench, stage, saves, steps, max(3, repeats // 2))
    finally:
        saves.writer.close()
    extra_s = max(0.0, median([s - b for b, s in zip(extra.baseline, extra.subject)]))
    val_s = validation_s(bench, stage)
    epoch_s = num_batches * step_s + val_s + extra_s
    return {
        "last_mb": round(layout.last(stage).stat().st_size / 2**20, 3),
        "best_mb": round(layout.best(stage).stat().st_size / 2**20, 3),
        "stall_ms": median_ms(stall.subject), "write_ms": median_ms(write.subject),
        "plain_ms": median_ms(stall.baseline), "extra_epoch_ms": round(extra_s * 1000, 2),
        "overlap_steps": steps, "epoch_ms": round(epoch_s * 1000, 1), "validation_ms": round(val_s * 1000, 1),
        "share": round(extra_s / epoch_s, 5) if math.isfinite(epoch_s) and epoch_s > 0 else None,
        "share_1s_epoch": round(extra_s / max(epoch_s, ONE_SECOND_EPOCH_S), 5) if math.isfinite(epoch_s) else None,
        "stall_vs_plain": stall.to_json(scale=1000, unit="ms"),
        "write_vs_plain": write.to_json(scale=1000, unit="ms"),
        "extra_pairs": extra.to_json(scale=1000, unit="ms"),
    }


def measure(bench: Bench) -> dict[str, Any]:
    details = {stage: measure_stage(bench, stage) for stage in TRAINED_STAGES}
    return {
        "checkpoint_share": {s: d["share"] for s, d in details.items()},
        "checkpoint_share_1s_epoch": {s: d["share_1s_epoch"] for s, d in details.items()},
        "atomic_vs_plain_ratio": {s: d["stall_vs_plain"]["ratio"] for s, d in details.items()},
        "atomic_vs_plain_write_ratio": {s: d["write_vs_plain"]["ratio"] for s, d in details.items()},
        "checkpoint": {"filesystem": filesystem_of(bench.work), **details},
    }
