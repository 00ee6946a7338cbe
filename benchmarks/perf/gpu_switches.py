"""GPU speed switches: samples/s per stage with each ``performance`` switch on alone, and all on, vs all off.

Each variant is a real ``fit`` through the engine with ``FitContext.performance`` set (what
``train`` passes from the config's ``performance:`` section); steady-state steps only, so compile time
and cuDNN autotuning fall in the warm-up. Variants run in a rotated order per repeat, and each is
reported as the median of its per-repeat ratio to the all-off run of the same repeat.
Deterministic algorithms are switched off for this section (cuDNN autotuning needs that; GPU runs
are not bit-exact anyway) and restored after. Skipped, with the reason, off CUDA.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from benchmarks.perf.engine_overhead import task_for
from benchmarks.perf.probe import calibrated_steps, run_engine
from benchmarks.perf.timing import median, rotate
from benchmarks.perf.workspace import TRAINED_STAGES, Bench
from mi_pipeline.engine.trainer import FitContext

SWITCHES: dict[str, dict[str, Any]] = {
    "amp_bf16": {"amp": "bf16"},
    "amp_fp16": {"amp": "fp16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "cudnn_benchmark": {"cudnn_benchmark": True},
    "workers_pinned": {"num_workers": 2, "pin_memory": True},
}
ALL_ON = {"amp": "bf16", "channels_last": True, "compile": True, "cudnn_benchmark": True, "num_workers": 2,
          "pin_memory": True}
MIN_WARMUP = 3  # torch.compile and cuDNN autotuning do their work in the first steps


def unavailable(bench: Bench) -> str | None:
    if bench.device.type != "cuda":
        return "needs --device cuda"
    try:
        from mi_pipeline.config import PerformanceConfig  # noqa: F401
        from mi_pipeline.engine import performance  # noqa: F401
    except ImportError as exc:
        return f"the performance switches are not available ({exc})"
    if "performance" not in {f.name for f in dataclasses.fields(FitContext)}:
        return "FitContext has no performance field: the engine does not take the switches yet"
    return None


def variants() -> dict[str, Any]:
    from mi_pipeline.config import PerformanceConfig

    return {"all_off": PerformanceConfig(), **{n: PerformanceConfig(**kw) for n, kw in SWITCHES.items()},
            "all_on": PerformanceConfig(**ALL_ON)}


def measure_stage(bench: Bench, stage: str) -> dict[str, Any]:
    probe = task_for(bench, stage)
    optim = dataclasses.replace(getattr(bench.cfg, stage), amp=None)  # the variant's amp applies
    warmup = max(bench.preset.warmup_steps, MIN_WARMUP)
    steps = calibrated_steps(bench.engine_step_s.get(stage, float("nan")), bench.preset.measure_s,
                             bench.preset.min_steps)
    configs = variants()
    rates: dict[str, list[float | None]] = {name: [] for name in configs}
    errors: dict[str, str] = {}
    for r in range(bench.preset.repeats):
        for name in rotate(list(configs), r):
            if name in errors:
                rates[name].append(None)
                continue
            try:
                times = run_engine(probe, optim, bench.folder("gpu") / stage / name, bench.device, bench.cfg.seed,
                                   warmup, steps, performance=configs[name])
                rates[name].append(optim.batch_size / times.step_s)
            except Exception as exc:  # noqa: BLE001 - one variant failing (bf16 on an old GPU) must not end the rest
                errors[name] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                rates[name].append(None)
    base = rates["all_off"]
    out: dict[str, Any] = {"samples_per_s_all_off": round(median([x for x in base if x]), 2), "vs_all_off": {},
                           "samples_per_s": {}}
    for name, values in rates.items():
        ratios = [v / b for v, b in zip(values, base) if v and b]
        if ratios:
            out["vs_all_off"][name] = round(median(ratios), 4)
            out["samples_per_s"][name] = round(median([v for v in values if v]), 2)
    if errors:
        out["errors"] = errors
    return out


def measure(bench: Bench) -> dict[str, Any]:
    reason = unavailable(bench)
    if reason:
        return {"gpu_switches": {"skipped": reason}}
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        per_stage = {stage: measure_stage(bench, stage) for stage in TRAINED_STAGES}
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = False
    return {"gpu_switches": {"device": torch.cuda.get_device_name(bench.device), "switches": SWITCHES,
                             "all_on": ALL_ON, **per_stage}}
