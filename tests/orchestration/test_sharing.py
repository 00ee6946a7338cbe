"""A run a colleague can read: group-readable files, and read-only commands on a read-only mount."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mi_pipeline.fsio import atomic_write_text
from mi_pipeline.orchestration.progress import ProgressFile
from tests.helpers import REPO, env, run_module

TINY = REPO / "tests" / "configs" / "tiny.yaml"


def test_atomic_writes_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        ProgressFile(tmp_path).update_stage("motion", status="pending")
    finally:
        os.umask(old)
    for name in ("a.txt", ".training_progress"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, f"{name}: the group cannot read it"


def test_status_of_a_run_dir_that_does_not_exist_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    out = run_module("mi_pipeline.status", "--run-dir", str(missing))
    assert out.returncode == 2 and "no such run directory" in out.stderr
    dry = run_module("mi_pipeline.submit", "--mode", "resume", "--dry-run", "--executor", "local", "--config",
                     str(TINY), "--run-dir", str(missing))
    assert dry.returncode == 0, dry.stderr
    assert not missing.exists(), "a command only asked to read created the run directory"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux) for a read-only bind mount")
def test_status_and_dry_run_work_on_a_read_only_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ProgressFile(run).update_stage("data", status="done")
    (run / ".training_progress.lock").unlink(missing_ok=True)
    script = (f"mount --bind -o ro {run} {run} && "
              f"{sys.executable} -m mi_pipeline.status --run-dir {run} && "
              f"{sys.executable} -m mi_pipeline.submit --mode resume --dry-run --executor local "
              f"--config {TINY} --run-dir {run}")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -m is not permitted here (needs root / CAP_SYS_ADMIN)")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "state: step1_data_prepared" in out.stdout
    assert "plan (mode resume" in out.stdout


def test_status_plot_draws_each_stage_curves_with_baselines_beside_them(tmp_path: Path) -> None:
    from mi_pipeline.orchestration.curves import _panels

    run = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "fixtures" / "run_v0.1.0", run)
    out = run_module("mi_pipeline.status", "--run-dir", str(run), "--plot")
    assert out.returncode == 0, out.stderr
    png = run / "logs" / "motion" / "curves.png"
    assert f"curves: {png}" in out.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "logs" / "registration" / "curves.png").exists(), "no curves for a stage never trained"
    panels = _panels([{"epoch": 1, "train_loss": 1.0, "myo_dice": 0.5, "myo_dice_identity": 0.4, "lr": 0.1,
                       "seconds": 3.0, "best": True}])
    assert ["myo_dice", "myo_dice_identity"] in panels and ["lr"] in panels
    assert all("seconds" not in p and "best" not in p for p in panels)
