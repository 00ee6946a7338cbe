"""Raising ``<stage>.epochs`` on a finished stage and resuming trains on from last.pth (no --force, no restart)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import REPO, run_module

TINY = REPO / "tests" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.slow


def test_more_epochs_continue_where_training_ended_and_a_real_change_still_needs_a_decision(tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["--config", str(TINY), "--run-dir", str(run), "--executor", "local"]
    first = run_module("mi_pipeline.submit", "--mode", "fresh", "--yes", *base, "--set", "motion.epochs=2")
    assert first.returncode == 0, first.stderr
    again = run_module("mi_pipeline.submit", "--mode", "resume", *base, "--set", "motion.epochs=3")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "epochs raised 2 -> 3" in again.stdout
    epochs = [json.loads(line)["epoch"] for line in (run / "logs" / "motion" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3], "epoch 3 trained on top of epochs 1-2, nothing redone"
    log = (run / "logs" / "motion" / "train.log").read_text()
    assert "only epoch counts changed (motion.epochs is 3): continuing from last.pth" in log
    assert "resuming from last.pth at epoch 3" in log
    seg_log = (run / "logs" / "segmentation" / "train.log").read_text()
    assert "segmentation done" in seg_log.split("only epoch counts changed")[-1], "segmentation followed motion"
    changed = run_module("mi_pipeline.submit", "--mode", "resume", *base, "--set", "motion.epochs=3",
                         "--set", "motion.lr=0.5")
    assert changed.returncode == 2 and "motion.lr" in changed.stderr and "--retrain-from motion" in changed.stderr
    assert changed.stderr.count("\n") == 1
