"""The benchmark harness (``python -m benchmarks.perf``): it runs end to end and writes every figure.

The numbers are not asserted (they depend on the machine and on what else runs on it); what is
checked is that every measurement ran, produced finite numbers under the documented keys, and that
targets are printed beside them. The run uses the test-only ``--smoke`` size and ``--skip-slurm``,
so it needs no cluster. The helpers that turn timestamps into figures are checked on made-up times.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks.perf.probe import engine_times
from benchmarks.perf.report import target_rows
from benchmarks.perf.timing import paired
from tests.helpers import REPO, env

STAGES = {"motion", "registration", "segmentation"}
PER_STAGE = ("engine_overhead_ratio", "checkpoint_share", "checkpoint_share_1s_epoch", "atomic_vs_plain_ratio",
             "atomic_vs_plain_write_ratio")
SINGLE = ("cache_speedup", "resume_latency_ratio", "orchestration_overhead_ratio", "ddp_efficiency")
DETAILS = ("meta", "engine", "checkpoint", "cache", "resume", "orchestration", "slurm", "scaling", "ddp", "profile",
           "gpu_switches", "targets", "errors")


def finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_bench(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks.perf", *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_smoke_run_writes_every_figure_with_its_target(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run_bench("--smoke", "--skip-slurm", "--json", str(out), "--work-dir", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["errors"] == {}
    for key in DETAILS:
        assert key in results, key
    for key in PER_STAGE:
        assert set(results[key]) == STAGES, key
        assert all(finite(v) for v in results[key].values()), (key, results[key])
    for key in SINGLE:
        assert finite(results[key]), (key, results.get(key))
    assert all(finite(results["engine"][s]["step_ms_engine"]) for s in STAGES)
    assert finite(results["cache"]["cache_size_mb"]) and finite(results["cache"]["peak_heap_mb_nifti"])
    assert results["scaling"]["table"] and all(finite(row["step_ms"]) for row in results["scaling"]["table"])
    assert all(results["profile"][s]["top_ops"] for s in STAGES)
    assert results["slurm"] == {"skipped": "--skip-slurm"}
    assert "skipped" in results["gpu_switches"]
    assert len(results["targets"]) == 4 * 3 + 3  # every target row (4 per stage, 3 single), met or not
    assert "engine_overhead_ratio[motion]" in proc.stdout and "<= 1.050x" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_cuda_without_a_gpu_is_one_line_and_exit_2() -> None:
    proc = run_bench("--device", "cuda", "--quick", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr


def test_paired_alternates_the_order_and_takes_the_median_ratio() -> None:
    calls: list[str] = []
    result = paired(lambda: calls.append("a") or 1.0, lambda: calls.append("b") or 2.0, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert result.ratio == 2.0


def test_engine_times_cut_steps_at_the_next_batch_or_validation() -> None:
    def stamps(*walls: float) -> list[tuple[float, float]]:
        return [(w, w / 2) for w in walls]  # (wall, cpu): the process ran half the time

    probe = SimpleNamespace(builds=stamps(0, 1, 2, 10, 11), losses=stamps(0.5, 1.5, 2.5, 10.5, 11.5),
                            validations=[tuple(stamps(3, 4))])
    times = engine_times(probe, warmup=1, steps=10)  # type: ignore[arg-type]
    assert times.steps_s == [1.0, 1.0]  # step 0 is warm-up; the last one has no end yet
    assert times.after_validation_s == [1.0]  # the step at t=10 follows the validation: timed apart
    assert times.steps_cpu_s == [0.5, 0.5]
    assert times.validations_s == [1.0] and times.epoch_ends_s == [6.0]


def test_target_rows_mark_each_stage() -> None:
    rows = target_rows({"engine_overhead_ratio": {"motion": 1.01, "registration": 1.2}, "cache_speedup": 12.0})
    assert [(r["stage"], r["met"]) for r in rows] == [("motion", True), ("registration", False), (None, True)]


def test_only_runs_the_named_sections_and_refuses_unknown_ones() -> None:
    from benchmarks.perf import runner

    ran: list[str] = []
    sections = tuple((name, lambda _bench, name=name: ran.append(name) or {}) for name, _ in runner.SECTIONS)
    results: dict = {"meta": {"section_s": {}, "section_cpu_s": {}}}
    original = runner.SECTIONS
    runner.SECTIONS = sections
    try:
        bench = SimpleNamespace(preset=SimpleNamespace(slurm=False, name="quick"))
        assert runner.run_sections(bench, results, True, 0.0, ("engine", "checkpoint")) == {}  # type: ignore[arg-type]
        assert ran == ["engine", "checkpoint"]
        assert "cache" in results["skipped_sections"]
        with pytest.raises(SystemExit, match="unknown section"):
            runner.run_sections(bench, results, True, 0.0, ("nope",))  # type: ignore[arg-type]
    finally:
        runner.SECTIONS = original
