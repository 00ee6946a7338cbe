"""Runs and queued jobs made before the package was rearranged keep working (tests/fixtures/README.md)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pickle
import shutil
from pathlib import Path

import pytest

from tests.helpers import REPO, run_module

FIXTURES = Path(__file__).parent / "fixtures"
TINY = Path(__file__).parent / "configs" / "tiny.yaml"
OLD_PATHS = ("mi_pipeline.slurm_executor", "mi_pipeline.executors", "mi_pipeline.plan", "mi_pipeline.progress",
             "mi_pipeline.container")


@pytest.mark.parametrize("old", OLD_PATHS)
def test_old_module_paths_are_the_new_modules(old: str) -> None:
    from mi_pipeline.compat import MOVED

    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__spec__.name == MOVED[old], "the real module keeps its own spec"


def test_stage_job_pickled_by_the_old_version_unpickles_and_trains(tmp_path: Path) -> None:
    from mi_pipeline.orchestration.local_executor import StageCommand
    from mi_pipeline.orchestration.slurm_executor import StageJob

    with open(FIXTURES / "stage_job_v0.1.0.pkl", "rb") as handle:
        delayed = pickle.load(handle)  # what submitit's _submit does when the job starts
    job = delayed.function
    assert type(job) is StageJob and type(job.command) is StageCommand
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run_v0.1.0", run)
    job = dataclasses.replace(job, command=dataclasses.replace(job.command, config=TINY, run_dir=run))
    assert job() == 0  # trains registration on the old run, here outside SLURM
    record = json.loads((run / ".training_progress").read_text().split("\n", 2)[2])
    assert record["stages"]["registration"]["status"] == "done"
    assert (run / "checkpoints" / "registration" / "best_model.pth").is_file()


@pytest.mark.slow
def test_run_made_by_the_old_version_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "run_v0.1.0", run)
    motion_before = (run / "checkpoints" / "motion" / "best_model.pth").read_bytes()
    out = run_module("mi_pipeline.submit", "--mode", "resume", "--executor", "local", "--config", str(TINY),
                     "--run-dir", str(run), cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "skip    motion" in out.stdout and "run     registration" in out.stdout, out.stdout
    assert (run / ".training_progress").read_text().splitlines()[0] == "all_completed"
    assert (run / "checkpoints" / "motion" / "best_model.pth").read_bytes() == motion_before, "motion kept as trained"
