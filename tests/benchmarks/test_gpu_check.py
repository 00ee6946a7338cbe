"""benchmarks/gpu_check (issue 27): the GPU check's dry run on CPU starts, runs every section, says what it skipped.

The GPU figures themselves need a lent GPU node: ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, env


def test_cpu_dry_run_measures_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "--device", "cpu", "--quick",
                           "--work-dir", str(tmp_path / "work")], cwd=REPO,
                          env={**env(), "GPU_CHECK_JSON": str(out)}, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for loop in (result["loop"], result["loop_gpu_bound"]):
        assert not loop.get("errors"), loop.get("errors")
        assert set(loop["steps_per_s"]) == {"bare", "ours", "ours_bf16", "ours_bf16_channels_last",
                                              "ours_ckpt_every_5_steps"}
        assert loop["syncs_per_step"]["bare"] == 0
        assert loop["syncs_per_step"]["ours"] <= 1 / 4, "ours reads the device at most once in the 4-step window"
    assert result["checkpoint"]["save_cost_ms"] > 0
    assert result["ddp"] == {"skipped": "cpu dry run"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_every_size_times_its_window_inside_one_epoch() -> None:
    from benchmarks.gpu_check import SIZES, fits_one_epoch

    assert all(fits_one_epoch(size) for size in SIZES), [s for s in SIZES if not fits_one_epoch(s)]
