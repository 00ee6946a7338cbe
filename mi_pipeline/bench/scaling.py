"""Item 6: how the motion stage's step time scales with image size and batch size, and with 2 DDP ranks.

Size table: a minimal loop (forward + loss, backward, AdamW step) of the real motion model and loss
on synthetic image pairs of each (crop, batch); every cell is reported relative to the config's own
(crop, batch) cell measured in the same repeats, per sample and per pixel.

DDP: the real engine (``fit`` on the motion task), one rank in this process on all cores vs two ranks
under ``torchrun`` (gloo, CPU) with the cores split between them, the same global batch, alternately.
Efficiency = (1-process step time / 2-process step time) / 2.
"""

from __future__ import annotations

import json
import os
from itertools import count
from typing import Any

import torch

from mi_pipeline.bench.engine_overhead import task_for
from mi_pipeline.bench.probe import run_engine
from mi_pipeline.bench.timing import clock, median, paired, rotate, sync
from mi_pipeline.bench.workspace import Bench, python_module, run_child
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
                         "mi_pipeline.bench.ddp_worker", "--run-dir", str(bench.trained_run()),
                         "--folder", str(bench.folder("ddp") / tag), "--out", str(out), "--threads", str(threads),
                         "--warmup", str(bench.preset.warmup_steps), "--steps", str(bench.preset.ddp_steps),
                         *bench.config_args())
    run_child(argv, DDP_TIMEOUT_S, "torchrun with 2 processes")
    return float(json.loads(out.read_text())["step_s"])


def _one_process_step_s(bench: Bench) -> float:
    """The same engine run with one rank, in this process, on all cores (saves a torchrun launch per pair)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        return run_engine(task_for(bench, "motion"), bench.cfg.motion, bench.folder("ddp") / "1proc", bench.device,
                          bench.cfg.seed, bench.preset.warmup_steps, bench.preset.ddp_steps).step_s
    finally:
        torch.set_num_threads(threads)


def ddp(bench: Bench) -> dict[str, Any]:
    if bench.device.type == "cuda":
        return {"skipped": "DDP scaling is measured on CPU (gloo); one GPU cannot host 2 NCCL ranks"}
    runs = count()
    pairs = paired(lambda: _one_process_step_s(bench), lambda: _two_process_step_s(bench, f"2proc_{next(runs)}"),
                   bench.preset.ddp_pairs)
    speedup = 1.0 / pairs.ratio  # ratio = 2-process step / 1-process step
    return {"stage": "motion", "backend": "gloo", "global_batch": bench.cfg.motion.batch_size,
            "threads": {"1proc": os.cpu_count(), "2proc_per_rank": max(1, (os.cpu_count() or 1) // 2)},
            "pairs": pairs.to_json(scale=1000, unit="ms"),
            "speedup": round(speedup, 4), "efficiency": round(speedup / 2, 4)}


def measure(bench: Bench) -> dict[str, Any]:
    return {"scaling": {"stage": "motion", "table": size_table(bench)}}


def measure_ddp(bench: Bench) -> dict[str, Any]:
    result = ddp(bench)
    return {"ddp": result, **({"ddp_efficiency": result["efficiency"]} if "efficiency" in result else {})}
