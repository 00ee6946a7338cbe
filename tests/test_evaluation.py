"""evaluate: JSON keys of the issue, per-subject lists, separate data roots, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mi_pipeline.cli import evaluate
from mi_pipeline.cli.common import run_main
from mi_pipeline.config import PhantomConfig, load_config
from mi_pipeline.data import prepare as prep
from mi_pipeline.data.phantom import generate_dataset
from tests.test_inference import TINY, save_untrained

KEYS = {"motion": ("myo_dice", "myo_dice_identity", "folding_percent"),
        "registration": ("myo_dice_before", "myo_dice_after"),
        "segmentation": ("infarct_dice", "myo_dice", "segment_auc", "infarct_size_mae", "hd95_mm")}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evalrun")
    cfg = load_config(TINY, ["data.phantom.subjects=6", "data.test_fraction=0.34"])
    prep.prepare_data(cfg, root, log=lambda _m: None)
    save_untrained(cfg, root / "checkpoints")
    return root


def test_json_has_the_issue_keys(run: Path, capsys) -> None:
    assert run_main(evaluate.main, ["--run-dir", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["subjects"]) == 2
    # what the models learnt from, read from the checkpoint's stored config and the run's splits
    assert result["trained_on"] == "phantom only (synthetic hearts): trained on 3 subject(s), best epoch chosen on 1"
    for stage, keys in KEYS.items():
        section = result[stage]
        for key in keys:
            assert key in section, (stage, key)
        assert all(len(v) == section["n_subjects"] for v in section["per_subject"].values())
    seg = result["segmentation"]
    assert seg["baseline_no_infarct"]["infarct_dice"] in (0.0, None)
    # untrained motion model = identity (zero-initialised output): same Dice as the baseline
    assert result["motion"]["myo_dice"] == pytest.approx(result["motion"]["myo_dice_identity"], abs=0.02)


def test_table_and_separate_data_root(run: Path, tmp_path: Path, capsys) -> None:
    generate_dataset(tmp_path / "unseen", PhantomConfig(subjects=2, seed=4242, size=72, slices=4, frames=10))
    assert run_main(evaluate.main, ["--run-dir", str(run), "--data-root", str(tmp_path / "unseen"),
                                    "--stage", "registration"]) == 0
    out = capsys.readouterr().out
    assert "cine<->LGE myocardium Dice" in out and "2 subject(s)" in out


def test_errors_are_one_line(run: Path, tmp_path: Path, capsys) -> None:
    assert run_main(evaluate.main, ["--run-dir", str(tmp_path), "--config", str(TINY)]) == 2
    assert "no trained stage" in capsys.readouterr().err
    (run / "data" / "splits" / "val.txt").rename(run / "val.bak")
    try:
        assert run_main(evaluate.main, ["--run-dir", str(run), "--split", "val"]) == 2
        err = capsys.readouterr().err.strip()
        assert "split list missing" in err and "\n" not in err
    finally:
        (run / "val.bak").rename(run / "data" / "splits" / "val.txt")
    (run / "checkpoints" / "registration" / "best_model.pth").rename(run / "reg.bak")
    try:
        assert run_main(evaluate.main, ["--run-dir", str(run), "--stage", "registration"]) == 2
        assert "stage registration is not trained" in capsys.readouterr().err
    finally:
        (run / "reg.bak").rename(run / "checkpoints" / "registration" / "best_model.pth")


def test_figures_are_written(run: Path, tmp_path: Path, capsys) -> None:
    assert run_main(evaluate.main, ["--run-dir", str(run), "--figures", str(tmp_path / "fig")]) == 0
    names = sorted(p.name for p in (tmp_path / "fig").iterdir())
    assert names == ["bland_altman.png", "segment_roc.png", "summary.png"]  # nothing else (no temp files)
    for name in names:
        assert (tmp_path / "fig" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _rv_labelled_subject(tmp_path: Path):
    """A phantom subject preprocessed as evaluate reads it, its cine labels marking the RV (code 5)."""
    from mi_pipeline.data.generic import load_subject
    from mi_pipeline.data.phantom import generate_subject, write_subject
    from mi_pipeline.data.preprocess import preprocess_subject

    params = PhantomConfig(subjects=1, seed=8, size=64, slices=6, frames=8, rv_label=True)
    write_subject(generate_subject(params, 0), tmp_path / "s0")
    subject = preprocess_subject(load_subject(tmp_path, "s0"), load_config(TINY).data)
    assert subject.cine_label is not None and (subject.cine_label == 5).any()
    return subject


def test_rv_scores_follow_the_rv_a_model_found(tmp_path: Path) -> None:
    import dataclasses

    import numpy as np

    from mi_pipeline.evaluation import rv_scores

    subject = _rv_labelled_subject(tmp_path)
    truth = subject.cine_label[:, 0]
    myo, rv = np.isin(truth, (2, 3)), truth == 5
    assert rv_scores(subject, myo, rv) == {"rv_dice": 1.0, "rv_anchor_within_20deg": 1.0}
    # the RV on the far side of the LV (turned 180 degrees about the crop centre, where the LV is):
    # the anchor the model's RV gives is then ~180 degrees off on every mid slice
    turned = rv_scores(subject, myo, np.rot90(rv, 2, axes=(1, 2)).copy())
    assert turned["rv_dice"] < 0.2 and turned["rv_anchor_within_20deg"] == 0.0
    # a model that did not learn the RV: no RV Dice, and the anchor is the image rule's
    from_images = rv_scores(subject, myo, None)
    assert from_images["rv_dice"] is None and from_images["rv_anchor_within_20deg"] is not None
    # labels without an RV: nothing to score against
    no_rv = dataclasses.replace(subject, cine_label=np.where(subject.cine_label == 5, 0, subject.cine_label))
    assert rv_scores(no_rv, myo, rv) == {"rv_dice": None, "rv_anchor_within_20deg": None}


def test_the_table_shows_the_aha_anchor_only_where_labels_mark_the_rv(run: Path, tmp_path: Path, capsys) -> None:
    generate_dataset(tmp_path / "rv", PhantomConfig(subjects=2, seed=4243, size=72, slices=6, frames=10,
                                                    rv_label=True))
    assert run_main(evaluate.main, ["--run-dir", str(run), "--data-root", str(tmp_path / "rv"),
                                    "--stage", "segmentation"]) == 0
    out = capsys.readouterr().out
    assert "AHA anchor within 20 deg" in out and "RV Dice" not in out  # the untrained model learnt no RV
    assert run_main(evaluate.main, ["--run-dir", str(run), "--stage", "segmentation", "--json"]) == 0
    seg = json.loads(capsys.readouterr().out)["segmentation"]
    assert seg["rv_anchor_within_20deg"] is None and seg["per_subject"]["rv_dice"] == [None, None]
    assert run_main(evaluate.main, ["--run-dir", str(run), "--stage", "segmentation"]) == 0
    assert "AHA anchor" not in capsys.readouterr().out  # the run's phantom draws no RV label
