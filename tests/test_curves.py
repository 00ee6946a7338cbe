"""Training curves say which validation metric picks the best epoch (from the stage's best_model.pth)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_pipeline.clinical.figures import figure_texts
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration import curves


@pytest.mark.parametrize("with_best", [True, False])
def test_curves_name_the_metric_that_picks_the_best_epoch(tmp_path: Path, monkeypatch, with_best: bool) -> None:
    layout = RunLayout(tmp_path)
    logs = layout.log_dir("segmentation")
    logs.mkdir(parents=True)
    records = [{"epoch": e, "train_loss": 1.0 / e, "infarct_dice": 0.1 * e, "infarct_dice_no_infarct_baseline": 0.0,
                "lr": 0.001, "best": e == 3} for e in (1, 2, 3, 4)]
    (logs / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if with_best:
        ckpt.save_checkpoint(layout.best("segmentation"), {"kind": "best", "model": {}, "metric_name": "infarct_dice",
                                                           "metric": 0.3, "epoch": 3})
    drawn = []
    monkeypatch.setattr(curves, "save_figure", lambda fig, path: drawn.append(fig))
    assert curves.plot_run(layout) == [logs / "curves.png"]
    title, texts = drawn[0].get_suptitle(), figure_texts(drawn[0])
    if with_best:
        assert "best epoch 3 chosen by validation infarct_dice (higher is better)" in title
        assert "infarct_dice\n(picks the best epoch)" in texts
    else:
        assert "the metric that picks the best epoch is not recorded" in title
        assert not any("picks the best epoch)" in t for t in texts)
