"""Item 1: training-step throughput through our engine vs a minimal hand-written PyTorch loop.

Same model (same seed), same batches (the engine's own order and augmentation seeds), same AdamW,
same batch size, from the stage's real task on the trained run's cache. Only steady-state steps are
compared: set-up and warm-up steps are excluded, and so are validation and the per-epoch checkpoint
(they fall between steps; ``checkpoint_cost`` reports the checkpoint share of an epoch), and so is
the first step after each validation, which is reported on its own (it pays for the caches the
validation left cold, an epoch-boundary cost that a loop without validation does not have). A run's
figure is its median step; the ratio is the median over interleaved (manual, engine) pairs. The
same ratio in process CPU time is reported beside it: on a loaded machine wall time swings with
other processes, CPU time much less. The engine writes its checkpoints in the foreground here
(``async_checkpoint: false``): a background write would spill the checkpoint's CPU cost into the
steps after an epoch end, and that cost is ``checkpoint_cost``'s to measure, whole.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.perf.probe import (
    ProbedTask,
    calibrated_steps,
    manual_steps,
    median_ms,
    run_engine,
)
from benchmarks.perf.timing import Stamp, median, paired_stamps
from benchmarks.perf.workspace import TRAINED_STAGES, Bench
from mi_pipeline.config import PerformanceConfig
from mi_pipeline.stages.registry import make_task


def task_for(bench: Bench, stage: str) -> ProbedTask:
    """The stage's real task on the trained run, set up once and shared by every measurement
    (segmentation's set-up runs its upstream models over the whole cache)."""
    if stage not in bench.tasks:
        probe = ProbedTask(make_task(stage, bench.cfg, bench.trained_run()))
        probe.setup(bench.device)
        bench.tasks[stage] = probe
    task = bench.tasks[stage]
    assert isinstance(task, ProbedTask)
    return task


def measure_stage(bench: Bench, stage: str) -> dict[str, Any]:
    probe = task_for(bench, stage)
    optim, preset, seed = getattr(bench.cfg, stage), bench.preset, bench.cfg.seed
    warmup = preset.warmup_steps
    estimate = median(manual_steps(probe.task, optim, bench.device, seed, warmup, 3).wall_s)  # warm-up, sizing
    steps = calibrated_steps(estimate, preset.measure_s, preset.min_steps)
    folder = bench.folder("engine") / stage
    epoch_ends: list[float] = []
    validations: list[float] = []
    after_validation: list[float] = []

    def manual() -> Stamp:
        times = manual_steps(probe.task, optim, bench.device, seed, warmup, steps)
        return median(times.wall_s), median(times.cpu_s)

    def engine() -> Stamp:
        run = run_engine(probe, optim, folder, bench.device, seed, warmup, steps,
                         performance=PerformanceConfig(async_checkpoint=False))
        epoch_ends.extend(run.epoch_ends_s)
        validations.extend(run.validations_s)
        after_validation.extend(run.after_validation_s)
        return run.step_s, median(run.steps_cpu_s)

    wall, cpu = paired_stamps(manual, engine, preset.repeats)
    bench.engine_step_s[stage] = median(wall.subject)
    return {
        "batch_size": optim.batch_size,
        "batches_per_epoch": math.ceil(probe.num_train_samples() / optim.batch_size),
        "timed_steps": steps, "warmup_steps": warmup,
        "step_ms_manual": median_ms(wall.baseline), "step_ms_engine": median_ms(wall.subject),
        "samples_per_s_engine": round(optim.batch_size / median(wall.subject), 2),
        "ratio_cpu_time": cpu.ratio,
        "in_engine_validation_ms": median_ms(validations) if validations else None,
        "in_engine_epoch_end_ms": median_ms(epoch_ends) if epoch_ends else None,
        "in_engine_step_after_validation_ms": median_ms(after_validation) if after_validation else None,
        "pairs": wall.to_json(scale=1000, unit="ms"),
        "pairs_cpu_time": cpu.to_json(scale=1000, unit="ms"),
    }


def measure(bench: Bench) -> dict[str, Any]:
    details = {stage: measure_stage(bench, stage) for stage in TRAINED_STAGES}
    return {"engine_overhead_ratio": {s: d["pairs"]["ratio"] for s, d in details.items()},
            "engine_overhead_ratio_cpu_time": {s: d["ratio_cpu_time"] for s, d in details.items()},
            "engine": details}
