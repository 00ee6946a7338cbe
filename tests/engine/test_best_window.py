"""``best_window``: best_model.pth is chosen on the mean of the last epochs' metric, not one lucky epoch,
and the window survives a stop and resume (it is part of last.pth's state)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mi_pipeline.config import OptimConfig
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.trainer import Interrupted, chosen_metric_name, window_mean
from tests.engine.toy_task import ToyTask, fit_toy

# a lucky epoch 2, then a steady climb: one epoch alone picks 2, a 3-epoch mean picks 6
SCRIPT = [0.5, 0.9, 0.3, 0.7, 0.75, 0.8]


class _Scripted(ToyTask):
    """Validation returns SCRIPT[epoch - 1] whatever the model does (``done``: epochs already validated)."""

    def __init__(self, done: int = 0) -> None:
        super().__init__()
        self.calls = done

    def validate(self, model, device):
        self.calls += 1
        return {"neg_mse": SCRIPT[self.calls - 1]}


def _fit(tmp_path: Path, task: _Scripted, window: int, stop_after: int = 0) -> int:
    state = fit_toy(tmp_path, task, OptimConfig(epochs=len(SCRIPT), batch_size=16, lr=1e-2, best_window=window),
                    stop_requested=lambda: stop_after > 0 and task.calls == stop_after)
    assert state.best_epoch is not None
    return state.best_epoch


def _best_epoch_on_disk(tmp_path: Path) -> int:
    return int(ckpt.load_checkpoint(tmp_path / "checkpoints" / "toy" / ckpt.BEST)["epoch"])


@pytest.mark.parametrize(("window", "expected"), [(1, 2), (3, 6)])
def test_the_window_decides_which_epoch_is_best(tmp_path: Path, window: int, expected: int) -> None:
    assert _fit(tmp_path, _Scripted(), window) == expected
    assert _best_epoch_on_disk(tmp_path) == expected


def test_the_window_survives_a_stop_and_resume(tmp_path: Path) -> None:
    with pytest.raises(Interrupted):
        _fit(tmp_path, _Scripted(), 3, stop_after=3)
    saved = ckpt.load_checkpoint(tmp_path / "checkpoints" / "toy" / ckpt.LAST)["state"]
    assert saved["recent_metrics"] == SCRIPT[:3]
    assert _fit(tmp_path, _Scripted(done=3), 3) == 6
    assert _best_epoch_on_disk(tmp_path) == 6


def test_a_missing_value_keeps_its_window_out_of_the_choice() -> None:
    assert window_mean([0.5, float("nan"), 0.9]) is None
    assert window_mean([0.5, 0.7]) == pytest.approx(0.6)
    assert window_mean([]) is None


def test_the_best_is_shown_under_the_name_of_what_chose_it(tmp_path: Path) -> None:
    """With a window the best value is a mean: logs, metrics and status name it ``<metric>_mean<N>``, not the
    raw metric (whose value that epoch may be lower)."""
    assert chosen_metric_name("dice", 1) == "dice" and chosen_metric_name("dice", 5) == "dice_mean5"
    _fit(tmp_path, _Scripted(), 3)
    _fit(tmp_path, _Scripted(done=len(SCRIPT)), 3)  # already trained: says so, with its best
    log = (tmp_path / "logs" / "toy" / "train.log").read_text()
    shown = re.search(r"already trained: 6/6 epochs, best neg_mse_mean3=(\S+)", log)
    assert shown is not None, log[-400:]
    assert float(shown.group(1)) == pytest.approx(sum(SCRIPT[3:6]) / 3)
    assert "best neg_mse=" not in log


class _Factual(_Scripted):
    def model_facts(self):
        return {"outputs_trained": ["a"], "partial": True}


def test_the_tasks_facts_travel_in_best_model_pth(tmp_path: Path) -> None:
    """What a loader must know about the model (``TrainTask.model_facts``) is in the best file, read
    without loading tensors; a task that says nothing leaves ``facts`` empty."""
    _fit(tmp_path, _Factual(), 1)
    best = tmp_path / "checkpoints" / "toy" / ckpt.BEST
    assert ckpt.read_metadata(best)["facts"] == {"outputs_trained": ["a"], "partial": True}
    _fit(tmp_path / "plain", _Scripted(), 1)
    assert ckpt.read_metadata(tmp_path / "plain" / "checkpoints" / "toy" / ckpt.BEST)["facts"] == {}
