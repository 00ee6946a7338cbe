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
