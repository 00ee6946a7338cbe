"""Segments follow the heart when the heart itself turns on the grid (not only the grid around it).

The crop-grid arrays of one infarcted phantom subject are rotated while the affine stays: the anatomy
is then turned relative to the patient axes, as in a heart that lies differently in the chest. The
RV-anchored per-segment infarct extents must stay within a few points of the unrotated ones; the
fixed-angle segments move (what anchoring is for).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mi_pipeline import metrics
from mi_pipeline.clinical import aha
from mi_pipeline.config import DataConfig, PhantomConfig
from mi_pipeline.data.generic import RawSubject
from mi_pipeline.data.phantom import generate_subject
from mi_pipeline.data.preprocess import preprocess_subject


@pytest.fixture(scope="module")
def subject():
    params = PhantomConfig(subjects=4, seed=5, size=80, slices=6, frames=8)
    for index in range(params.subjects):
        s = generate_subject(params, index)
        if (s.cine_label == 3).sum() > 50:
            raw = RawSubject(id=s.id, folder=Path("."), cine=s.cine.astype(np.float32), cine_affine=s.cine_affine,
                             lge=None, lge_affine=None, lge_label=None, ed=s.info["ed"], es=s.info["es"],
                             cine_label=s.cine_label)
            return preprocess_subject(raw, DataConfig(crop=64, frames=4))
    raise AssertionError("no infarcted subject among the first four")


def _turn(a: np.ndarray, degrees: float, order: int) -> np.ndarray:
    """Rotate the last two axes about the crop centre (exactly for multiples of 90 degrees)."""
    if degrees % 90 == 0:
        return np.rot90(a, k=int(degrees // 90), axes=(-2, -1)).copy()
    return ndimage.rotate(a, degrees, axes=(-2, -1), reshape=False, order=order, mode="nearest")


def _extents(cine: np.ndarray, lab: np.ndarray, affine: np.ndarray, fixed: bool = False) -> dict:
    myo, inf = np.isin(lab, (2, 3)), lab == 3
    if fixed:
        return metrics.segment_extents(metrics.aha_segment_map(myo), myo, inf)
    anchor = aha.anchor_from_images(cine[:, 0], myo, affine, 1.6, motion=cine.std(axis=1))
    assert aha.anchor_summary(anchor)["method"] == "rv_insertion"
    return metrics.segment_extents(aha.segment_map(myo, anchor), myo, inf)


def _change(a: dict, b: dict) -> float:
    return float(np.mean([abs(a[s] - b[s]) * 100 for s in a if a[s] is not None and b[s] is not None]))


@pytest.mark.parametrize("degrees", [90.0, 180.0, 270.0, 45.0])
def test_segments_follow_turned_anatomy(subject, degrees: float) -> None:
    lab = subject.cine_label[:, 0]
    base = _extents(subject.cine, lab, subject.affine)
    turned = _extents(_turn(subject.cine, degrees, 1), _turn(lab, degrees, 0), subject.affine)
    assert _change(base, turned) <= 5.0, (degrees, base, turned)


def test_fixed_angle_moves_with_the_grid(subject) -> None:
    lab = subject.cine_label[:, 0]
    base = _extents(subject.cine, lab, subject.affine, fixed=True)
    turned = _extents(subject.cine, _turn(lab, 90.0, 0), subject.affine, fixed=True)
    assert _change(base, turned) > 3.0


def test_summary_names_the_fallback() -> None:
    anchor = aha.fixed_anchor([True, False], "no RV insertion point found")
    assert aha.anchor_summary(anchor) == {"method": "fixed_angle", "source": "fixed",
                                          "why": "no RV insertion point found"}
