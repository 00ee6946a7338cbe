"""The label-free localisation benchmark (``benchmarks.real``) end to end on two phantom hearts written in
ACDC's layout with an RV label: every column is computed and the targets hold on hearts this easy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import real
from mi_pipeline.config import PhantomConfig
from mi_pipeline.data.phantom import generate_subject
from tests.data.test_adapters import _save


def _acdc_with_rv(root: Path, params: PhantomConfig) -> None:
    for i in range(params.subjects):
        heart, sid = generate_subject(params, i), f"patient{i + 1:03d}"
        ed, es = heart.info["ed"], heart.info["es"]
        _save(heart.cine.astype(np.float32), heart.cine_affine, root / sid / f"{sid}_4d.nii.gz")
        (root / sid / "Info.cfg").write_text(f"ED: {ed + 1}\nES: {es + 1}\nGroup: NOR\n")
        for t in (ed, es):
            lab = heart.cine_label[..., t]
            acdc = np.select([lab == 1, np.isin(lab, (2, 3)), lab == 5], [3, 2, 1], 0).astype(np.uint8)
            _save(acdc, heart.cine_affine, root / sid / f"{sid}_frame{t + 1:02d}_gt.nii.gz")


def test_the_benchmark_scores_centre_crop_and_rv_anchor_on_labelled_hearts(tmp_path: Path, capsys) -> None:
    params = PhantomConfig(subjects=2, seed=3, size=96, slices=6, frames=8, rv_label=True)
    _acdc_with_rv(tmp_path / "acdc", params)
    assert real.main([str(tmp_path / "acdc"), "--format", "acdc", "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["subject"] for r in result["rows"]] == ["patient001", "patient002"]
    for row in result["rows"]:
        assert row["centre_mm"] <= 5.0 and row["method"] == "blood_pool"
        assert row["crop_ok"] and row["checked_crop_ok"] and row["crop_grown"] == 0
        assert row["mid_slices"] >= 1 and row["rv_within"] == row["rv_found"] == row["mid_slices"]
    assert "pooled: 2 subjects" in capsys.readouterr().out
