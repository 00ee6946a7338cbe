"""Where each stage's training step spends its time (torch.profiler), in a few lines per stage.

A few steps of the minimal loop on the stage's real task are profiled with the phases labelled
(build batch, forward + loss, backward, optimizer); the summary keeps each phase's share and the
operators with the most self time. It is what docs/PERFORMANCE.md quotes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.perf.engine_overhead import task_for
from benchmarks.perf.probe import positions
from benchmarks.perf.workspace import TRAINED_STAGES, Bench
from mi_pipeline.engine.trainer import batch_seed

PHASES = ("bench:make_batch", "bench:forward+loss", "bench:backward", "bench:optimizer")
TOP = 6


def _profiled_steps(bench: Bench, stage: str, steps: int) -> profile:
    probe = task_for(bench, stage)
    task, optim, seed, device = probe.task, getattr(bench.cfg, stage), bench.cfg.seed, bench.device
    torch.manual_seed(seed)
    model = task.build_model().to(device).train()
    optimizer = torch.optim.AdamW(task.param_groups(model, optim.lr), weight_decay=optim.weight_decay)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    warmup = bench.preset.warmup_steps
    prof = profile(activities=activities)
    for i, epoch, b, indices in positions(task, optim.batch_size, seed, warmup + steps):
        if i == warmup:
            prof.start()
        with record_function(PHASES[0]):
            batch = task.make_batch(indices, torch.Generator().manual_seed(batch_seed(seed, epoch, b)), device)
        with record_function(PHASES[1]):
            loss, _ = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        with record_function(PHASES[2]):
            loss.backward()
        with record_function(PHASES[3]):
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    prof.stop()
    return prof


def _self_time(event: Any, device: torch.device) -> float:
    """Self time in microseconds: on the GPU for a CUDA run (where the step's time goes), else on the CPU."""
    if device.type == "cuda":
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
    return float(event.self_cpu_time_total)


def summarise(prof: profile, steps: int, device: torch.device) -> dict[str, Any]:
    events = prof.key_averages()
    phase_us = {e.key: e.cpu_time_total for e in events if e.key in PHASES}
    total_phase = sum(phase_us.values()) or 1.0
    ops = [e for e in events if e.key not in PHASES]
    total_self = sum(_self_time(e, device) for e in ops) or 1.0
    top = sorted(ops, key=lambda e: _self_time(e, device), reverse=True)[:TOP]
    return {
        "step_ms": round(total_phase / steps / 1000, 2),
        "phase_share": {k.split(":", 1)[1]: round(phase_us.get(k, 0.0) / total_phase, 3) for k in PHASES},
        "top_ops_by": "self GPU time" if device.type == "cuda" else "self CPU time",
        "top_ops": [{"op": e.key, "self_ms_per_step": round(_self_time(e, device) / steps / 1000, 2),
                     "share": round(_self_time(e, device) / total_self, 3), "calls_per_step": e.count // steps}
                    for e in top],
    }


def measure(bench: Bench) -> dict[str, Any]:
    steps = bench.preset.profile_steps
    return {"profile": {stage: summarise(_profiled_steps(bench, stage, steps), steps, bench.device)
                        for stage in TRAINED_STAGES}}
