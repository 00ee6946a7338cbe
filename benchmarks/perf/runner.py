"""Run every measurement in order, print the table, write the JSON.

Order matters: the orchestration run trains the pipeline whose run directory (cache, checkpoints)
the later measurements read, and the engine measurement sets up each stage's task once for the
checkpoint, profile and GPU measurements. A measurement that fails is reported (JSON ``errors``,
traceback on stderr) and the others still run; the exit status is 1 when any failed, 0 otherwise --
also when a target is missed, which is a finding, not an error.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.perf import (
    cache_speed,
    checkpoint_cost,
    engine_overhead,
    gpu_switches,
    orchestration,
    profiling,
    resume_latency,
    scaling,
    slurm_overhead,
)
from benchmarks.perf.report import markdown, render, target_rows
from benchmarks.perf.timing import clock, peak_rss_mb
from benchmarks.perf.workspace import (
    DEFAULT_CONFIG,
    PRESETS,
    Bench,
    filesystem_of,
    machine_snapshot,
)
from mi_pipeline.engine.determinism import setup_determinism
from mi_pipeline.fsio import atomic_write_text

SECTIONS: tuple[tuple[str, Callable[[Bench], dict[str, Any]]], ...] = (
    ("orchestration", orchestration.measure),
    ("slurm", slurm_overhead.measure),
    ("engine", engine_overhead.measure),
    ("checkpoint", checkpoint_cost.measure),
    ("cache", cache_speed.measure),
    ("resume", resume_latency.measure),
    ("scaling", scaling.measure),
    ("ddp", scaling.measure_ddp),
    ("profile", profiling.measure),
    ("gpu_switches", gpu_switches.measure),
)
DESCRIPTION = ("Benchmark the pipeline's machinery (engine, checkpoints, cache, resume, orchestration, SLURM, "
               "scaling): every figure is a ratio of timings taken alternately in one run; see docs/PERFORMANCE.md")
NO_CUDA = "error: --device cuda: no CUDA device is visible on this machine (run with --device cpu)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf", description=DESCRIPTION)
    parser.add_argument("--json", type=Path, help="write the results here (JSON)")
    parser.add_argument("--quick", action="store_true",
                        help="small phantom, few steps and repeats, no SLURM (~2 minutes on idle cores)")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: smaller still
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to train (cuda adds the GPU switch table)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="pipeline config (default: configs/demo.yaml)")
    parser.add_argument("--work-dir", type=Path, help="scratch folder, kept afterwards (default: a temp dir, removed)")
    parser.add_argument("--markdown", type=Path, help="also write the figures as Markdown tables here")
    parser.add_argument("--skip-slurm", action="store_true", help="do not submit to SLURM even when sbatch is there")
    parser.add_argument("--only", type=lambda text: tuple(t.strip() for t in text.split(",") if t.strip()),
                        help="comma-separated sections to run, e.g. orchestration,engine,checkpoint (checkpoint needs "
                             "the other two: the trained run and the engine's step time)")
    return parser.parse_args(argv)


def _say(start: float, message: str) -> None:
    print(f"[bench {clock() - start:6.1f}s] {message}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: what a section would take on idle cores."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def run_sections(bench: Bench, results: dict[str, Any], skip_slurm: bool, start: float,
                 only: tuple[str, ...] | None = None) -> dict[str, str]:
    errors: dict[str, str] = {}
    unknown = set(only or ()) - {name for name, _ in SECTIONS}
    if unknown:
        raise SystemExit(f"error: --only: unknown section(s) {', '.join(sorted(unknown))}")
    for name, measure in SECTIONS:
        if only and name not in only:
            results.setdefault("skipped_sections", []).append(name)
            continue
        if name == "slurm" and (skip_slurm or not bench.preset.slurm):
            why = "--skip-slurm" if skip_slurm else f"not part of the {bench.preset.name} preset (run without --quick)"
            results["slurm"] = {"skipped": why}
            continue
        _say(start, f"{name} ...")
        began, cpu = clock(), cpu_seconds()
        try:
            results.update(measure(bench))
        except Exception as exc:  # noqa: BLE001 - report it, run the other measurements
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
        results["meta"]["section_s"][name] = round(clock() - began, 1)
        results["meta"]["section_cpu_s"][name] = round(cpu_seconds() - cpu, 1)
    return errors


def meta(args: argparse.Namespace, argv: list[str] | None, bench: Bench) -> dict[str, Any]:
    """What the run was: command, sizes, versions, and what else the machine was doing at the start."""
    return {"command": "python -m benchmarks.perf " + " ".join(sys.argv[1:] if argv is None else argv),
            "preset": bench.preset.name, "device": args.device, "config": str(bench.config_path),
            "overrides": list(bench.overrides), "threads": bench.cfg.threads, "work_dir": str(bench.work),
            "filesystem": filesystem_of(bench.work), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(), "torch": torch.__version__,
            "machine_start": machine_snapshot(), "section_s": {}, "section_cpu_s": {}}


def write_outputs(args: argparse.Namespace, results: dict[str, Any]) -> None:
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1, default=str) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, markdown(results) + "\n")
    print(render(results))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    preset = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    work = args.work_dir.resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="mi_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    start = clock()
    try:
        bench = Bench(preset, args.config.resolve(), work, torch.device(args.device))
        setup_determinism(bench.cfg.seed, bench.cfg.threads, bench.cfg.deterministic, bench.device)
        results: dict[str, Any] = {"meta": meta(args, argv, bench)}
        results["errors"] = run_sections(bench, results, args.skip_slurm, start, args.only)
        results["targets"] = target_rows(results)
        results["meta"].update(seconds=round(clock() - start, 1), cpu_s=round(cpu_seconds(), 1),
                               peak_rss_mb=round(peak_rss_mb(), 1), machine_end=machine_snapshot())
        write_outputs(args, results)
        _say(start, f"done ({preset.name}, {results['meta']['seconds']:.0f} s)"
             + (f"; JSON in {args.json}" if args.json else ""))
        return 1 if results["errors"] else 0
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
