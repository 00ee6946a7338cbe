"""Label-free LV localisation finds the blood pool it checks, names its fallback, and sizes the crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mi_pipeline.config import DataConfig, PhantomConfig
from mi_pipeline.data import localise, preprocess
from mi_pipeline.data.generic import RawSubject
from mi_pipeline.data.phantom import generate_subject


def _raw(index: int, **params) -> RawSubject:
    s = generate_subject(PhantomConfig(subjects=4, seed=5, size=80, slices=6, frames=8, **params), index)
    return RawSubject(id=s.id, folder=Path("."), cine=s.cine.astype(np.float32), cine_affine=s.cine_affine, lge=None,
                      lge_affine=None, lge_label=None, ed=s.info["ed"], es=s.info["es"], cine_label=s.cine_label)


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_blood_pool_found_within_3mm_of_the_labels(index: int) -> None:
    raw = _raw(index)
    found = preprocess.locate(raw)
    want = preprocess._label_center(raw)
    sp = np.linalg.norm(raw.cine_affine[:3, :2], axis=0)
    assert found.method == "blood_pool" and found.why is None and len(found.slices) >= 4
    assert np.hypot((found.center[0] - want[0]) * sp[0], (found.center[1] - want[1]) * sp[1]) <= 3.0


def test_noise_falls_back_and_says_so() -> None:
    cine = np.random.default_rng(0).random((64, 64, 4, 6)).astype(np.float32)
    found = localise.locate_lv(cine, (1.5, 1.5), fallback=preprocess.lv_center_heuristic)
    assert found.method == "temporal_std_fallback" and found.why and found.radius_mm is None


def test_crop_spacing_grows_only_for_a_heart_that_does_not_fit() -> None:
    raw = _raw(0)
    centre = preprocess._label_center(raw)
    assert preprocess.crop_spacing(raw, centre, DataConfig(crop=64)) == 1.6  # 102 mm holds a normal heart
    small = preprocess.crop_spacing(raw, centre, DataConfig(crop=32))  # 51 mm does not
    assert small > 1.6
    sub = preprocess.preprocess_subject(raw, DataConfig(crop=32, frames=4))
    assert sub.spacing[0] == pytest.approx(small)
    myo = np.isin(sub.cine_label, (2, 3))
    assert not (myo[..., 0, :].any() or myo[..., -1, :].any() or myo[..., :, 0].any() or myo[..., :, -1].any())


def test_describe_names_method_and_reason() -> None:
    cine = np.random.default_rng(1).random((48, 48, 3, 4)).astype(np.float32)
    text = localise.describe(localise.locate_lv(cine, (1.5, 1.5)))
    assert text["method"] == "temporal_std_fallback" and text["why"] and text["pool_radius_mm"] is None
