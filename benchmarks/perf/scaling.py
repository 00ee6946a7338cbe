"""Item 6: how the motion stage's step time scales with image size and batch size, and with 2 DDP ranks.

Size table: a minimal loop (forward + loss, backward, AdamW step) of the real motion model and loss
on synthetic image pairs of each (crop, batch); every cell is reported relative to the config's own
(crop, batch) cell measured in the same repeats, per sample and per pixel.

DDP: the real engine (``fit`` on the motion task), two ranks under ``torchrun`` (gloo, CPU, one thread
each) vs one rank in this process with one thread (efficiency = T1 / (2 x T2), ideal 1) and with all
cores as threads (does DDP beat intra-op threads on the same cores?); same global batch, alternately.
"""

from __future__ import annotations

import json
import os
from itertools import count
from typing import Any

import torch

from benchmarks.perf.engine_overhead import task_for
from benchmarks.perf.probe import run_engine
from benchmarks.perf.timing import clock, median, rotate, sync
from benchmarks.perf.workspace import Bench, python_module, run_child
from mi_pipeline.stages import motion

DDP_TIMEOUT_S = 300.0


def _step_s(bench: Bench, crop: int, batch: int, steps: int) -> float:
    task = motion.MotionTask(bench.cfg, bench.trained_run())
    torch.manual_seed(bench.cfg.seed)
    model = motion.build_model(bench.cfg).to(bench.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=bench.cfg.motion.lr)
    g = torch.Generator().manual_seed(0)
    data = {k: torch.rand(batch, 1, crop, crop, generator=g).to(bench.device) for k in ("moving", "fixed")}
    start = clock()
    for i in range(steps + 1):  # the first step warms up
        if i == 1:
            sync(bench.device)
            start = clock()
        loss, _ = task.loss(model, data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(bench.device)
    return (clock() - start) / steps


def size_table(bench: Bench) -> list[dict[str, Any]]:
    p = bench.preset
    cells = [(c, b) for c in p.scaling_crops for b in p.scaling_batches]
    if p.scaling_base not in cells:
        cells.append(p.scaling_base)
    times: dict[tuple[int, int], list[float]] = {cell: [] for cell in cells}
    for r in range(p.scaling_repeats):
        for cell in rotate(cells, r * 3):
            times[cell].append(_step_s(bench, *cell, p.scaling_steps))
    base_crop, base_batch = p.scaling_base
    base = median(times[p.scaling_base])
    rows = []
    for (crop, batch), values in times.items():
        step = median(values)
        per_sample = (step / batch) / (base / base_batch)
        rows.append({"crop": crop, "batch": batch, "step_ms": round(step * 1000, 2),
                     "samples_per_s": round(batch / step, 1), "per_sample_vs_base": round(per_sample, 3),
                     "per_pixel_vs_base": round(per_sample * (base_crop / crop) ** 2, 3)})
    return rows


def _two_process_step_s(bench: Bench, tag: str) -> float:
    out = bench.folder("ddp") / f"{tag}.json"
    threads = max(1, (os.cpu_count() or 1) // 2)
    argv = python_module("torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--module",
                         "benchmarks.perf.ddp_worker", "--run-dir", str(bench.trained_run()),
                         "--folder", str(bench.folder("ddp") / tag), "--out", str(out), "--threads", str(threads),
                         "--warmup", str(bench.preset.warmup_steps), "--steps", str(bench.preset.ddp_steps),
                         *bench.config_args())
    run_child(argv, DDP_TIMEOUT_S, "torchrun with 2 processes")
    return float(json.loads(out.read_text())["step_s"])


def _one_process_step_s(bench: Bench, threads: int) -> float:
    """The same engine run with one rank, in this process, on ``threads`` threads (no torchrun launch)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run_engine(task_for(bench, "motion"), bench.cfg.motion, bench.folder("ddp") / "1proc", bench.device,
                          bench.cfg.seed, bench.preset.warmup_steps, bench.preset.ddp_steps).step_s
    finally:
        torch.set_num_threads(before)


def ddp(bench: Bench) -> dict[str, Any]:
    """2 ranks x 1 thread vs 1 rank x 1 thread (strong scaling: efficiency = T1 / (2 x T2), ideal 1), and vs
    1 rank x all cores (the same cores as threads instead of ranks), in rotated order per repeat."""
    if bench.device.type == "cuda":
        return {"skipped": "DDP scaling is measured on CPU (gloo); one GPU cannot host 2 NCCL ranks"}
    cores = os.cpu_count() or 1
    runs = count()
    variants = {"1rank_1thread": lambda: _one_process_step_s(bench, 1),
                f"1rank_{cores}threads": lambda: _one_process_step_s(bench, cores),
                "2ranks_1thread": lambda: _two_process_step_s(bench, f"2proc_{next(runs)}")}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(bench.preset.ddp_repeats):
        for name in rotate(list(variants), r):
            times[name].append(variants[name]())
    one, all_cores, two = (times[name] for name in variants)
    efficiency = median([a / (2 * b) for a, b in zip(one, two)])
    vs_threads = median([a / b for a, b in zip(all_cores, two)])
    return {"stage": "motion", "backend": "gloo", "global_batch": bench.cfg.motion.batch_size,
            "step_ms": {name: [round(v * 1000, 2) for v in values] for name, values in times.items()},
            "efficiency": round(efficiency, 4), "speedup_vs_1thread": round(2 * efficiency, 4),
            "speedup_vs_threads_on_same_cores": round(vs_threads, 4)}


def measure(bench: Bench) -> dict[str, Any]:
    return {"scaling": {"stage": "motion", "table": size_table(bench)}}


def measure_ddp(bench: Bench) -> dict[str, Any]:
    result = ddp(bench)
    return {"ddp": result, **({"ddp_efficiency": result["efficiency"]} if "efficiency" in result else {})}
