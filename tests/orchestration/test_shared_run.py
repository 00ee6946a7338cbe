"""A run directory shared by several terminals, people and jobs: one trainer per stage, one submitter per
run, records that cannot be poisoned, a run that remembers its config. Real processes throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mi_pipeline.orchestration.progress import FILENAME, ProgressFile
from tests.helpers import REPO, env, run_module, wait_for

TINY = REPO / "tests" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.slow


def train(run_dir: Path, stage: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mi_pipeline.train", "--stage", stage, "--config", str(TINY),
                             "--run-dir", str(run_dir), *extra], env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def record(run_dir: Path, stage: str):
    return ProgressFile(run_dir).read().stages[stage]


def metric_epochs(run_dir: Path, stage: str) -> list[int]:
    path = run_dir / "logs" / stage / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("prepared")
    result = run_module("mi_pipeline.train", "--stage", "data", "--config", str(TINY), "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


def copy_of(prepared: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "run"
    shutil.copytree(prepared, target, symlinks=True)
    return target


def test_a_second_trainer_of_the_same_stage_is_refused_and_the_epochs_are_trained_once(prepared: Path,
                                                                                       tmp_path: Path) -> None:
    run_dir = copy_of(prepared, tmp_path)
    first = train(run_dir, "motion", "--set", "motion.epochs=16")
    wait_for(lambda: record(run_dir, "motion").status == "running" and record(run_dir, "motion").pid == first.pid,
             120, "the first trainer to take the lease", first)
    second = run_module("mi_pipeline.train", "--stage", "motion", "--config", str(TINY), "--run-dir", str(run_dir),
                        "--set", "motion.epochs=16")
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "already being trained" in lines[0] and f"pid {first.pid}" in lines[0], lines
    assert record(run_dir, "motion").pid == first.pid, "the refused trainer left the holder's record alone"
    assert first.wait(600) == 0, first.stderr
    epochs = metric_epochs(run_dir, "motion")
    assert epochs == list(range(1, 17)), f"every epoch once, in order: {epochs}"


def test_a_killed_trainers_lease_is_taken_over_and_training_continues(prepared: Path, tmp_path: Path) -> None:
    run_dir = copy_of(prepared, tmp_path)
    first = train(run_dir, "motion", "--set", "motion.epochs=16")
    wait_for(lambda: record(run_dir, "motion").epoch >= 2, 300, "two epochs on disk", first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(30)
    assert record(run_dir, "motion").status == "running", "kill -9 leaves the record saying running"
    second = run_module("mi_pipeline.train", "--stage", "motion", "--config", str(TINY), "--run-dir", str(run_dir),
                        "--set", "motion.epochs=16")
    assert second.returncode == 0, second.stderr
    after = record(run_dir, "motion")
    assert after.status == "done" and after.attempts == 2
    epochs = metric_epochs(run_dir, "motion")
    assert epochs == list(range(1, 17)), f"the killed epoch is redone, none twice: {epochs}"


def test_a_second_submitter_is_refused_the_first_finishes_and_the_run_remembers_its_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["--config", str(TINY), "--run-dir", str(run_dir), "--executor", "local", "--mode", "resume",
            "--set", "motion.epochs=16", "--set", "registration.epochs=1", "--set", "segmentation.epochs=1"]
    first = subprocess.Popen([sys.executable, "-m", "mi_pipeline.submit", *args], env=env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: record(run_dir, "motion").status == "running", 300, "the first submit to train motion", first)
    second = run_module("mi_pipeline.submit", *args)
    assert second.returncode == 2
    assert "another submit is working on this run" in second.stderr and f"pid {first.pid}" in second.stderr, \
        second.stderr
    out, err = first.communicate(timeout=900)
    assert first.returncode == 0, out + err
    progress = ProgressFile(run_dir).read()
    assert progress.state == "all_completed", progress
    assert metric_epochs(run_dir, "motion") == list(range(1, 17))

    stored = (run_dir / "config.yaml").read_text()
    assert "epochs: 16" in stored and stored.startswith("# this run's config")
    again = run_module("mi_pipeline.submit", "--run-dir", str(run_dir), "--dry-run")
    assert again.returncode == 0, again.stderr
    assert "using this run's config" in again.stderr
    assert "executor: local (this run was last submitted with it" in again.stdout
    assert "DECIDE" not in again.stdout and "plan (mode resume" in again.stdout, again.stdout
    assert all(line.strip().startswith("skip") for line in again.stdout.splitlines()[2:]), again.stdout
    changed = run_module("mi_pipeline.submit", "--run-dir", str(run_dir), "--dry-run", "--set", "motion.lr=0.01")
    assert "DECIDE" in changed.stdout and "motion.lr" in changed.stdout, changed.stdout


@pytest.mark.parametrize("detail, why", [
    ('{"version": 1, "state": "step1_data_prepared", "stages": []}', "stages: expected an object"),
    ('{"version": 1, "state": "step1_data_prepared", "stages": {"motion": {"epoch": "2"}}}', "stages.motion.epoch"),
    ('{"version": 1, "state": "step1_data_prepared", "stages": {"data": {"status": "finished"}}}', "status"),
    ('{"version": 1, "state": "step1_data_prepared", "stages": {"motion": {"attempts": true}}}', "attempts"),
])
def test_a_record_with_wrong_types_is_kept_aside_and_rebuilt_by_every_command(prepared: Path, tmp_path: Path,
                                                                               detail: str, why: str) -> None:
    run_dir = copy_of(prepared, tmp_path)
    bad = f"step1_data_prepared\n{detail}\n"
    (run_dir / FILENAME).write_text(bad)
    status = run_module("mi_pipeline.status", "--run-dir", str(run_dir), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["state"] == "step1_data_prepared", "rebuilt from the data cache on disk"
    assert any("corrupted" in note and why in note for note in report["notes"]), report["notes"]
    assert (run_dir / f"{FILENAME}.corrupt").read_text() == bad
    plan = run_module("mi_pipeline.submit", "--config", str(TINY), "--run-dir", str(run_dir), "--dry-run",
                      "--executor", "local")
    assert plan.returncode == 0 and "Traceback" not in plan.stderr, plan.stderr
    assert "skip    data" in plan.stdout


def test_a_record_from_a_newer_version_is_refused_with_one_line(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_text('step0_not_started\n{"version": 7, "state": "step0_not_started", '
                                     '"stages": {}, "lease": {"new": true}}\n')
    for argv in (["mi_pipeline.status", "--run-dir", str(tmp_path)],
                 ["mi_pipeline.submit", "--run-dir", str(tmp_path), "--dry-run", "--executor", "local"]):
        result = run_module(*argv)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "record version 7" in lines[0] and "newer mi_pipeline" in lines[0], lines
    assert not (tmp_path / f"{FILENAME}.corrupt").exists(), "a newer record is not ours to repair"


def test_dry_run_needs_no_mode_and_changes_nothing(tmp_path: Path) -> None:
    result = run_module("mi_pipeline.submit", "--config", str(TINY), "--run-dir", str(tmp_path / "new"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "plan (mode resume" in result.stdout and "executor: " in result.stdout
    assert not (tmp_path / "new").exists()
