"""Item 2: what the per-epoch atomic checkpoint costs.

The payloads are the real ``last.pth`` and ``best_model.pth`` the trained run wrote, saved again
through ``engine/checkpoint.save_checkpoint`` (temp file, fsync, rename, directory fsync) and, for
the baseline, with a plain ``torch.save`` to the same folder (no fsync, no rename), alternately.
Share of an epoch = (last + best save) / (batches x engine step + validation + saves): an upper
bound, since best is only saved in epochs that improve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mi_pipeline.bench.engine_overhead import task_for
from mi_pipeline.bench.probe import median_ms
from mi_pipeline.bench.timing import median, paired, sync, timed
from mi_pipeline.bench.workspace import TRAINED_STAGES, Bench, filesystem_of
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.layout import RunLayout


def _save_times(payload: dict[str, Any], folder: Path, name: str, repeats: int):
    atomic, plain = folder / name, folder / f"plain_{name}"
    return paired(lambda: timed(lambda: torch.save(payload, plain)),
                  lambda: timed(lambda: ckpt.save_checkpoint(atomic, payload)), repeats)


def validation_s(bench: Bench, stage: str, repeats: int = 3) -> float:
    """One validation pass of the stage, as the engine runs it at every epoch end."""
    task = task_for(bench, stage)
    model = task.task.build_model().to(bench.device).eval()

    def once() -> None:
        with torch.no_grad():
            task.task.validate(model, bench.device)
        sync(bench.device)

    return median([timed(once) for _ in range(repeats)])


def measure_stage(bench: Bench, stage: str) -> dict[str, Any]:
    layout = RunLayout(bench.trained_run())
    folder = bench.folder("checkpoints") / stage
    folder.mkdir(parents=True, exist_ok=True)
    repeats = bench.preset.checkpoint_repeats
    last = _save_times(ckpt.load_checkpoint(layout.last(stage)), folder, ckpt.LAST, repeats)
    best = _save_times(ckpt.load_checkpoint(layout.best(stage)), folder, ckpt.BEST, repeats)
    save_s = median(last.subject) + median(best.subject)
    task = task_for(bench, stage)
    optim = getattr(bench.cfg, stage)
    num_batches = -(-task.num_train_samples() // optim.batch_size)
    val_s = validation_s(bench, stage)
    epoch_s = num_batches * bench.engine_step_s[stage] + val_s + save_s
    return {
        "last_mb": round(layout.last(stage).stat().st_size / 2**20, 3),
        "best_mb": round(layout.best(stage).stat().st_size / 2**20, 3),
        "save_last_ms": median_ms(last.subject), "save_best_ms": median_ms(best.subject),
        "plain_last_ms": median_ms(last.baseline),
        "epoch_ms": round(epoch_s * 1000, 1), "validation_ms": round(val_s * 1000, 1),
        "share": round(save_s / epoch_s, 5),
        "atomic_vs_plain_last": last.to_json(scale=1000, unit="ms"),
        "atomic_vs_plain_best": best.to_json(scale=1000, unit="ms"),
    }


def measure(bench: Bench) -> dict[str, Any]:
    details = {stage: measure_stage(bench, stage) for stage in TRAINED_STAGES}
    return {
        "checkpoint_share": {s: d["share"] for s, d in details.items()},
        "atomic_vs_plain_ratio": {s: d["atomic_vs_plain_last"]["ratio"] for s, d in details.items()},
        "checkpoint": {"filesystem": filesystem_of(bench.work), **details},
    }
