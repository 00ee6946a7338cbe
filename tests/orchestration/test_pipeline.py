"""The whole pipeline through the real CLIs on a tiny phantom: modes, status, kill -9, the seed's cases."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    assert_same_weights,
    checkpoint_epoch,
    env,
    model_weights,
    run_module,
    wait_for,
)

TINY = REPO / "tests" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.slow


def submit(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_module("mi_pipeline.submit", "--config", str(TINY), "--run-dir", str(run_dir),
                      "--executor", "local", *args)


def status(run_dir: Path) -> dict:
    result = run_module("mi_pipeline.status", "--run-dir", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("full")
    result = submit(run_dir, "--mode", "fresh", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def copy_run(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(source, target, symlinks=True)
    return target


def test_fresh_run_completes_with_three_checks(finished_run: Path) -> None:
    report = status(finished_run)
    assert report["state"] == "all_completed"
    for stage in ("data", "motion", "registration", "segmentation"):
        assert report["stages"][stage]["status"] == "done", report["stages"][stage]
    for stage in ("motion", "registration", "segmentation"):
        info = report["stages"][stage]
        assert info["best_model"] == "ok" and info["epoch"] == info["epochs"] and info["attempts"] == 1
        assert (finished_run / "logs" / stage / "train.log").is_file()
        records = [json.loads(line) for line in (finished_run / "logs" / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == list(range(1, info["epochs"] + 1))
    assert (finished_run / ".training_progress").read_text().splitlines()[0] == "all_completed"
    text = run_module("mi_pipeline.status", "--run-dir", str(finished_run)).stdout
    assert text.count("✓") == 4


def test_kill9_mid_motion_then_resume_matches_uninterrupted(finished_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mi_pipeline.submit", "--config", str(TINY), "--run-dir",
                             str(run_dir), "--executor", "local", "--mode", "fresh", "--yes"],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = run_dir / "checkpoints" / "motion" / "last.pth"
    wait_for(lambda: checkpoint_epoch(last) >= 1, 300, "motion epoch 1", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the submitter and its training child, no chance to clean up
    proc.wait()
    killed_at = checkpoint_epoch(last)
    assert 1 <= killed_at < 12, f"kill landed at epoch {killed_at}; the test needs it mid-stage"
    killed = status(run_dir)["stages"]
    assert killed["motion"]["status"] == "failed"  # the dead pid is noticed
    assert killed["segmentation"]["status"] == "not_started" and "submitter" in killed["segmentation"]["detail"]

    result = submit(run_dir, "--mode", "resume")
    assert result.returncode == 0, result.stdout + result.stderr
    log = (run_dir / "logs" / "motion" / "train.log").read_text()
    assert f"resuming from last.pth at epoch {killed_at + 1}" in log
    assert_same_weights(model_weights(last), model_weights(finished_run / "checkpoints" / "motion" / "last.pth"))
    assert status(run_dir)["state"] == "all_completed"


def test_hand_written_state_resumes_from_that_step(finished_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / ".training_progress").write_text("step1_data_prepared\n")
    shutil.rmtree(run_dir / "checkpoints" / "motion")  # the guide's case 3: restart from step 2
    plan = submit(run_dir, "--mode", "resume", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout
    assert "skip    data" in lines and "run     motion" in lines
    result = submit(run_dir, "--mode", "resume")
    assert result.returncode == 0, result.stdout + result.stderr
    assert status(run_dir)["state"] == "all_completed"


def test_corrupted_progress_file_is_rebuilt(finished_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / ".training_progress").write_bytes(b"\x00garbage{{")
    report = status(run_dir)
    assert report["state"] == "all_completed"
    assert any("corrupted" in note for note in report["notes"])
    assert (run_dir / ".training_progress.corrupt").read_bytes() == b"\x00garbage{{"


def test_skip_retrains_corrupted_best_model(finished_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    best = run_dir / "checkpoints" / "motion" / "best_model.pth"
    best.write_bytes(best.read_bytes()[:100])  # truncated
    plan = submit(run_dir, "--mode", "skip", "--dry-run")
    assert "restart motion" in plan.stdout and "corrupted" in plan.stdout
    result = submit(run_dir, "--mode", "skip")
    assert result.returncode == 0, result.stdout + result.stderr
    assert status(run_dir)["stages"]["motion"]["best_model"] == "ok"


def test_skip_after_deleting_registration_retrains_only_it_and_dependants(finished_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / "registration")
    motion_best = run_dir / "checkpoints" / "motion" / "best_model.pth"
    before = motion_best.stat().st_mtime_ns
    plan = submit(run_dir, "--mode", "skip", "--dry-run")
    assert "skip    motion" in plan.stdout
    assert "registration" in plan.stdout and "depends on registration" in plan.stdout
    result = submit(run_dir, "--mode", "skip")
    assert result.returncode == 0, result.stdout + result.stderr
    assert motion_best.stat().st_mtime_ns == before, "motion must not be retrained"
    assert "restarting segmentation from scratch" in (run_dir / "logs/segmentation/train.log").read_text()
    report = status(run_dir)
    assert report["state"] == "all_completed" and report["stages"]["registration"]["best_model"] == "ok"


def test_no_mode_without_terminal_is_a_clear_error(tmp_path: Path) -> None:
    result = submit(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --mode is required when not on a terminal (fresh | resume | skip)"


def test_fresh_lists_what_it_deletes_and_needs_yes_without_terminal(finished_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(finished_run, tmp_path)
    result = submit(run_dir, "--mode", "fresh")
    assert result.returncode == 2 and "--yes" in result.stderr
    for name in ("checkpoints/motion", "checkpoints/registration", "checkpoints/segmentation", "logs/motion",
                 ".training_progress"):
        assert str(run_dir / name) in result.stdout
    assert (run_dir / "checkpoints" / "motion" / "best_model.pth").exists(), "nothing deleted without --yes"


def test_progress_without_checkpoint_is_refused_not_restarted(tmp_path: Path) -> None:
    from mi_pipeline.orchestration.progress import ProgressFile

    ProgressFile(tmp_path).update_stage("motion", status="failed", epoch=3)
    result = run_module("mi_pipeline.train", "--stage", "motion", "--config", str(TINY), "--run-dir", str(tmp_path))
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]  # the log lines before it go to train.log too
    assert error.startswith("error: ") and "checkpoints/motion/last.pth" in error
    assert "reached epoch 3" in error and "refusing to start over silently" in error
    assert not (tmp_path / "checkpoints" / "motion" / "last.pth").exists()
