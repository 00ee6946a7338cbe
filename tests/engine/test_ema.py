"""``optim.ema_decay``: validation and best_model.pth use an exponential moving average of the weights;
the average is saved in last.pth, and a last.pth saved without one still resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mi_pipeline.config import OptimConfig
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.ema import WeightAverage
from tests.engine.toy_task import ToyTask, fit_toy
from tests.helpers import assert_same_weights


def _fit(tmp_path: Path, task: ToyTask, epochs: int, ema_decay: float) -> None:
    fit_toy(tmp_path, task, OptimConfig(epochs=epochs, batch_size=16, lr=1e-2, ema_decay=ema_decay))


def _load(tmp_path: Path, name: str) -> dict:
    return ckpt.load_checkpoint(tmp_path / "checkpoints" / "toy" / name)


def test_the_average_moves_one_minus_decay_of_the_way_after_a_warm_up() -> None:
    model = nn.Linear(2, 1)
    average = WeightAverage(model, decay=0.9)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert average.rate(1) == pytest.approx(2 / 11)  # the random start is forgotten fast
    average.update(step=1000)
    assert torch.allclose(average.module.weight, before + 0.1)
    assert torch.equal(model.weight, before + 1.0), "training's weights are not touched"
    average.reset()
    assert torch.equal(average.module.weight, model.weight)


def test_counters_are_copied_and_running_statistics_averaged() -> None:
    model = nn.BatchNorm1d(2)
    average = WeightAverage(model, decay=0.5)
    model.train()
    model(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))  # running_mean 0 -> 0.1 * (2, 4); one batch counted
    average.update(step=1000)
    assert torch.allclose(average.module.running_mean, torch.tensor([0.1, 0.2]))
    assert int(average.module.num_batches_tracked) == 1


def test_best_model_holds_the_averaged_weights_validation_scored(tmp_path: Path) -> None:
    task = ToyTask()
    _fit(tmp_path, task, epochs=3, ema_decay=0.9)
    best, last = _load(tmp_path, ckpt.BEST), _load(tmp_path, ckpt.LAST)
    model = task.build_model().eval()
    model.load_state_dict(best["model"])
    with torch.no_grad():
        assert task.validate(model, torch.device("cpu"))["neg_mse"] == pytest.approx(best["metric"])
    assert best["epoch"] == 3  # the toy improves every epoch
    assert_same_weights(best["model"], last["ema"])
    assert not torch.equal(last["ema"]["0.weight"], last["model"]["0.weight"]), "the average is not the raw weights"


def test_without_ema_decay_best_model_holds_the_raw_weights(tmp_path: Path) -> None:
    _fit(tmp_path, ToyTask(), epochs=2, ema_decay=0.0)
    last = _load(tmp_path, ckpt.LAST)
    assert "ema" not in last
    best = _load(tmp_path, ckpt.BEST)
    assert best["epoch"] == 2
    assert_same_weights(best["model"], last["model"])


def test_a_last_pth_saved_without_an_average_resumes_from_the_current_weights(tmp_path: Path) -> None:
    _fit(tmp_path, ToyTask(), epochs=2, ema_decay=0.0)
    _fit(tmp_path, ToyTask(), epochs=3, ema_decay=0.9)
    log = (tmp_path / "logs" / "toy" / "train.log").read_text()
    assert "resuming from last.pth at epoch 3" in log
    assert "no weight average" in log and "starts from the current weights" in log
    assert "ema" in _load(tmp_path, ckpt.LAST)
