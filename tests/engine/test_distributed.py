"""Data-parallel training on CPU (gloo, 2 processes via torchrun): rank 0 alone writes, resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.distributed import LEAVE_TIMEOUT
from tests.engine.test_trainer import RUN_TOY
from tests.helpers import (
    assert_same_weights,
    checkpoint_epoch,
    child_pids,
    env,
    model_weights,
    wait_for,
)

EPOCHS = 4
FAIL_ONE_RANK = Path(__file__).resolve().parents[1] / "processes" / "fail_one_rank.py"


def start_ddp(run_dir: Path, sleep_s: float = 0.0, ema_decay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(RUN_TOY), str(run_dir), str(EPOCHS), str(sleep_s), "toyhash", str(ema_decay)],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "toy" / "last.pth"


@pytest.mark.slow
@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_two_rank_run_writes_once_and_resumes_exactly_after_a_signal(tmp_path: Path, ema_decay: float) -> None:
    """Also with a weight average (each rank updates its own from the synced weights; rank 0 writes it):
    the two-rank run resumed after a signal has the uninterrupted run's average and best_model.pth."""
    reference = tmp_path / "reference"
    proc = start_ddp(reference, ema_decay=ema_decay)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "data parallel: rank 1 of 2" in err
    records = (reference / "logs" / "toy" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == list(range(1, EPOCHS + 1)), "rank 0 alone writes metrics"
    assert "rank 1" not in (reference / "logs" / "toy" / "train.log").read_text()

    run_dir = tmp_path / "interrupted"
    proc = start_ddp(run_dir, sleep_s=0.05, ema_decay=ema_decay)
    wait_for(lambda: checkpoint_epoch(last(run_dir)) >= 1, 120, "epoch 1 checkpoint", proc)
    for rank_pid in child_pids(proc.pid):
        os.kill(rank_pid, signal.SIGUSR2)  # to every rank, as srun delivers it to every task
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "saved exact position" in err, err
    assert torch.load(last(run_dir), weights_only=True)["state"]["batch"] > 0
    proc = start_ddp(run_dir, ema_decay=ema_decay)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_same_weights(model_weights(last(run_dir)), model_weights(last(reference)))
    if ema_decay:
        assert_same_weights(ckpt.load_checkpoint(last(run_dir))["ema"], ckpt.load_checkpoint(last(reference))["ema"])
        assert_same_weights(model_weights(run_dir / "checkpoints/toy/best_model.pth"),
                            model_weights(reference / "checkpoints/toy/best_model.pth"))


@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_failing_rank_does_not_hold_the_others_at_the_exit(failing_rank: int) -> None:
    """Clean ranks wait for their peers before leaving the group, but not for one that failed."""
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(FAIL_ONE_RANK), str(failing_rank)],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _out, err = proc.communicate(timeout=LEAVE_TIMEOUT.total_seconds() - 15)  # well before the wait's own bound
    assert proc.returncode != 0
    assert f"rank {failing_rank} failed on purpose" in err
