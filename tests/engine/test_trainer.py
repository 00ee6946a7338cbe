"""The engine's promises, on a toy task in real processes: exact resume after kill -9 and signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    assert_same_weights,
    checkpoint_epoch,
    env,
    model_weights,
    wait_for,
)

RUN_TOY = Path(__file__).resolve().parents[1] / "processes" / "run_toy.py"
EPOCHS = 6
EMA_DECAY = 0.9


def start_toy(run_dir: Path, epochs: int = EPOCHS, sleep_s: float = 0.0, config_hash: str = "toyhash",
              ema_decay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN_TOY), str(run_dir), str(epochs), str(sleep_s), config_hash,
                             str(ema_decay)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    finish(start_toy(run_dir))
    return run_dir


def last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "toy" / "last.pth"


@pytest.fixture(scope="module")
def uninterrupted_ema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted_ema")
    finish(start_toy(run_dir, ema_decay=EMA_DECAY))
    return run_dir


@pytest.mark.slow
def test_kill9_between_epochs_resumes_bit_exact(tmp_path: Path, uninterrupted: Path) -> None:
    proc = start_toy(tmp_path, sleep_s=0.02)
    wait_for(lambda: checkpoint_epoch(last(tmp_path)) >= 2, 60, "epoch 2 checkpoint", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_epoch(last(tmp_path))
    assert 2 <= killed_at < EPOCHS
    log = finish(start_toy(tmp_path))
    assert f"resuming from last.pth at epoch {killed_at + 1}" in log
    assert_same_weights(model_weights(last(tmp_path)), model_weights(last(uninterrupted)))
    assert_same_weights(model_weights(tmp_path / "checkpoints/toy/best_model.pth"),
                        model_weights(uninterrupted / "checkpoints/toy/best_model.pth"))
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "logs/toy/metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1)), "metrics.jsonl must hold each epoch exactly once"
    assert not list((tmp_path / "checkpoints" / "toy").glob("*.tmp")), "temp files left behind"


@pytest.mark.slow
def test_sigusr2_mid_epoch_saves_position_and_resumes_bit_exact(tmp_path: Path, uninterrupted: Path) -> None:
    proc = start_toy(tmp_path, sleep_s=0.05)
    wait_for(lambda: checkpoint_epoch(last(tmp_path)) >= 1, 60, "epoch 1 checkpoint", proc)
    proc.send_signal(signal.SIGUSR2)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "saved exact position" in err
    import torch

    saved = torch.load(last(tmp_path), weights_only=True)["state"]
    assert saved["batch"] > 0, "the stop should land inside an epoch"
    log = finish(start_toy(tmp_path))
    assert f"batch {saved['batch'] + 1}" in log
    assert_same_weights(model_weights(last(tmp_path)), model_weights(last(uninterrupted)))


@pytest.mark.slow
def test_sigusr2_mid_epoch_with_a_weight_average_resumes_bit_exact(tmp_path: Path, uninterrupted_ema: Path) -> None:
    """The average is part of the exact position: resumed, it is the uninterrupted run's, and so is best_model.pth."""
    proc = start_toy(tmp_path, sleep_s=0.05, ema_decay=EMA_DECAY)
    wait_for(lambda: checkpoint_epoch(last(tmp_path)) >= 1, 60, "epoch 1 checkpoint", proc)
    proc.send_signal(signal.SIGUSR2)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    import torch

    saved = torch.load(last(tmp_path), weights_only=True)["state"]
    assert saved["batch"] > 0, "the stop should land inside an epoch"
    log = finish(start_toy(tmp_path, ema_decay=EMA_DECAY))
    assert f"batch {saved['batch'] + 1}" in log and "no weight average" not in log
    from mi_pipeline.engine import checkpoint as ckpt

    resumed, reference = ckpt.load_checkpoint(last(tmp_path)), ckpt.load_checkpoint(last(uninterrupted_ema))
    assert_same_weights(resumed["model"], reference["model"])
    assert_same_weights(resumed["ema"], reference["ema"])
    assert_same_weights(model_weights(tmp_path / "checkpoints/toy/best_model.pth"),
                        model_weights(uninterrupted_ema / "checkpoints/toy/best_model.pth"))


@pytest.mark.slow
def test_changed_config_is_refused_then_forced_never_silently_restarted(tmp_path: Path) -> None:
    finish(start_toy(tmp_path, epochs=2))
    proc = start_toy(tmp_path, epochs=2, config_hash="otherhash")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "config hash" in err and "--force" in err


@pytest.mark.slow
def test_finished_run_is_not_retrained(tmp_path: Path) -> None:
    finish(start_toy(tmp_path, epochs=2))
    before = last(tmp_path).stat().st_mtime_ns
    log = finish(start_toy(tmp_path, epochs=2))
    assert "already trained" in log
    assert last(tmp_path).stat().st_mtime_ns == before
