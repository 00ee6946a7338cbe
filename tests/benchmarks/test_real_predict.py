"""The real-data predict benchmark on a small ACDC-layout folder: predict runs per subject with the
dataset's ED, its myocardium is scored against the labels on the cine's grid, and a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from benchmarks import real_predict
from mi_pipeline.config import PhantomConfig, load_config
from mi_pipeline.data.phantom import generate_subject
from mi_pipeline.metrics import dice
from tests.data.test_adapters import _acdc
from tests.test_inference import TINY, save_untrained


def test_predict_is_scored_against_the_labels_at_ed_and_a_rerun_resumes(tmp_path: Path, capsys) -> None:
    params = PhantomConfig(subjects=2, seed=5, size=64, slices=4, frames=8, spacing_mm=1.5, slice_thickness_mm=10.0)
    hearts = [generate_subject(params, i) for i in range(2)]
    _acdc(tmp_path / "acdc", hearts)
    save_untrained(load_config(TINY), tmp_path / "run" / "checkpoints")
    args = [str(tmp_path / "acdc"), "--run-dir", str(tmp_path / "run"), "--json", str(tmp_path / "r.json")]
    assert real_predict.main(args) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["subject"] for r in result["rows"]] == ["patient001", "patient002"]
    assert result["pooled"]["subjects"] == 2 and "pooled: 2 subjects" in capsys.readouterr().out
    for row, heart in zip(result["rows"], hearts):
        (out,) = (tmp_path / "run" / "real_predict" / "acdc" / row["subject"]).iterdir()
        report = json.loads((out / "report.json").read_text())
        ed = heart.info["ed"]
        assert report["frames"]["ed"] == ed  # the dataset's ED was given to predict
        predicted = np.asarray(nib.load(str(out / "infarct_seg.nii.gz")).dataobj) > 0
        assert predicted.shape == heart.cine.shape[:3]  # on the cine's own grid
        assert row["myo_dice"] == round(float(dice(predicted, np.isin(heart.cine_label[..., ed], (2, 3)))), 4)
        assert row["verdict"] == report["trust"]["verdict"] and row["crop_mm"] == report["localisation"]["crop_mm"]
        assert 0 <= row["rv_within"] <= row["rv_found"] <= row["rv_mid_slices"]
    stamps = sorted(p.stat().st_mtime_ns for p in (tmp_path / "run" / "real_predict").rglob("report.json"))
    assert real_predict.main(args) == 0  # resumes: the reports are read, not made again
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "run" / "real_predict").rglob("report.json")) == stamps
