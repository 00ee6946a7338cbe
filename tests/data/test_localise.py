"""Label-free LV localisation finds the blood pool it checks, names its fallback, and sizes the crop."""

from __future__ import annotations

from dataclasses import replace
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
    assert sub.spacing[0] >= small  # at least what the labels need: never a cut labelled heart
    myo = np.isin(sub.cine_label, (2, 3))
    assert not preprocess.on_outer_ring(myo)


def test_labelled_and_unlabelled_crops_share_predicts_width() -> None:
    """Training data (cine labels, or LGE labels only, as a site's data comes) is cropped as wide as
    ``predict`` crops the same cine without labels, so a model sees each heart at the scale it is later
    shown; only where the labelled myocardium reaches farther is the crop wider still."""
    s = generate_subject(PhantomConfig(subjects=4, seed=5, size=80, slices=6, frames=8), 0)
    cfg = DataConfig(crop=32, frames=4)
    cine = dict(id=s.id, folder=Path("."), cine=s.cine.astype(np.float32), cine_affine=s.cine_affine, ed=s.info["ed"])
    raw = RawSubject(**cine, lge=None, lge_affine=None, lge_label=None, cine_label=s.cine_label)
    unlabelled = RawSubject(**cine, lge=None, lge_affine=None, lge_label=None)
    lge_only = RawSubject(**cine, lge=s.lge.astype(np.float32), lge_affine=s.lge_affine, lge_label=s.lge_label)
    predicted = preprocess.preprocess_subject(unlabelled, cfg).spacing[0]
    assert predicted > cfg.spacing_mm  # this heart does not fit 32 x 1.6 mm: predict widens the crop
    for labelled in (raw, lge_only):
        sub = preprocess.preprocess_subject(labelled, cfg)
        assert sub.spacing[0] == pytest.approx(predicted)
        label = sub.cine_label[:, 0] if sub.cine_label is not None else sub.lge_label
        assert not preprocess.on_outer_ring(np.isin(label, (2, 3)))
    # a crop asked to be tighter than the labelled wall still holds the wall
    tight = preprocess.crop_spacing(lge_only, preprocess._label_center(lge_only), cfg,
                                    replace(preprocess.locate(raw), radius_mm=1.0))
    assert tight == pytest.approx(preprocess.crop_spacing(lge_only, preprocess._label_center(lge_only), cfg))
    assert tight > cfg.spacing_mm


def test_describe_names_method_and_reason() -> None:
    cine = np.random.default_rng(1).random((48, 48, 3, 4)).astype(np.float32)
    text = localise.describe(localise.locate_lv(cine, (1.5, 1.5)))
    assert text["method"] == "temporal_std_fallback" and text["why"] and text["pool_radius_mm"] is None


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_a_vessel_brighter_than_the_lv_on_the_basal_slices_does_not_pull_the_centre() -> None:
    """A bright, round, beating vessel on half the slices outscores the LV there; the LV's pool runs
    through every slice, drifting a little, so the chain along the stack is the LV's (a median over the
    slices' winners lands between the two)."""
    shape, slices, frames, spacing = (96, 96), 8, 8, (1.5, 1.5)
    cine = np.full(shape + (slices, frames), 0.1, dtype=np.float32)
    lv = (52.0, 48.0)
    vessel = (30.0, 62.0)  # ~39 mm away
    for k in range(slices):
        drift = (lv[0] + 0.4 * k, lv[1] - 0.3 * k)
        for t in range(frames):
            squeeze = np.sin(np.pi * t / frames)
            cine[_disc(shape, drift, 19.0 - 1.5 * squeeze), k, t] = 0.35  # myocardium
            cine[_disc(shape, drift, 12.0 - 4.0 * squeeze), k, t] = 0.75  # blood pool, largest at ED
            if k < slices // 2:
                cine[_disc(shape, vessel, 7.0 + 1.5 * squeeze), k, t] = 1.0
    cine += np.random.default_rng(0).normal(0.0, 0.01, cine.shape).astype(np.float32)
    found = localise.locate_lv(cine, spacing)
    assert found.method == "blood_pool" and len(found.slices) >= slices - 1, localise.describe(found)
    want = (lv[0] + 0.4 * (slices - 1) / 2, lv[1] - 0.3 * (slices - 1) / 2)
    assert np.hypot((found.center[0] - want[0]) * spacing[0], (found.center[1] - want[1]) * spacing[1]) <= 3.0, found


def test_a_cavity_whose_blood_is_dim_on_one_side_is_centred_on_the_whole_cavity() -> None:
    """Slow-flowing blood darkens one side of the cavity below every pool threshold, so the bright pool
    is the cavity less that side; its centre was 4.5 mm off. The cavity grown from the pool into tissue
    brighter than a level between its blood and its dark ring recovers the whole cavity and its centre."""
    shape, slices, frames, spacing = (96, 96), 6, 8, (1.5, 1.5)
    cine = np.full(shape + (slices, frames), 0.25, dtype=np.float32)  # chest wall and liver
    lv = (50.0, 47.0)
    rows = np.mgrid[0:shape[0], 0:shape[1]][0]
    for k in range(slices):
        for t in range(frames):
            squeeze = np.sin(np.pi * t / frames)
            cine[_disc(shape, lv, 20.0 - 1.5 * squeeze), k, t] = 0.1  # myocardium, darker than its surroundings
            pool = _disc(shape, lv, 13.0 - 4.0 * squeeze)
            cine[pool, k, t] = 0.75
            cine[pool & (rows > lv[0] + 4), k, t] = 0.36  # dim blood beyond a chord 4 px from the centre
    cine += np.random.default_rng(0).normal(0.0, 0.01, cine.shape).astype(np.float32)
    found = localise.locate_lv(cine, spacing)
    assert found.method == "blood_pool" and len(found.slices) == slices, localise.describe(found)
    assert np.hypot((found.center[0] - lv[0]) * spacing[0], (found.center[1] - lv[1]) * spacing[1]) <= 2.5, found


def _beating_lv(cine: np.ndarray, k: int, centre: tuple[float, float], pool: float, wall: float) -> None:
    """Slice ``k`` of ``cine``: a myocardial ring (0.25: below every pool threshold over a 0.1 background) around a
    blood pool (0.75) largest at ED."""
    shape, frames = cine.shape[:2], cine.shape[3]
    for t in range(frames):
        squeeze = np.sin(np.pi * t / frames)
        cine[_disc(shape, centre, pool + wall - 1.5 * squeeze), k, t] = 0.25
        cine[_disc(shape, centre, pool - 4.0 * squeeze), k, t] = 0.75


def _moved_slice() -> tuple[RawSubject, list[tuple[float, float]], float]:
    """A dilated LV (33 mm pool, 9 mm wall) on 8 slices whose slice 3 was held 30 mm off (a breath-hold; real
    patient014 moved 25-35 mm on two slices), beyond a link's reach (``JUMP_MM``): (cine, slice centres, heart
    radius in px)."""
    shape, slices, frames, spacing = (128, 128), 8, 8, (1.5, 1.5)
    cine = np.full(shape + (slices, frames), 0.1, dtype=np.float32)
    pool, wall = 22.0, 6.0
    centres = [(64.0 + (20.0 if k == 3 else 0.0), 64.0) for k in range(slices)]  # 20 px = 30 mm
    for k, c in enumerate(centres):
        _beating_lv(cine, k, c, pool, wall)
    cine += np.random.default_rng(0).normal(0.0, 0.01, cine.shape).astype(np.float32)
    affine = np.diag([spacing[0], spacing[1], 8.0, 1.0])
    raw = RawSubject(id="moved", folder=Path("."), cine=cine, cine_affine=affine, lge=None, lge_affine=None,
                     lge_label=None, ed=0, es=frames // 2)
    return raw, centres, pool + wall


def test_the_crop_holds_a_slice_the_breath_hold_moved_beyond_the_chains_reach() -> None:
    """The chain skips the moved slice, and the crop sized from the chain's pools alone cut its myocardium;
    the skipped slice's pool overlaps the chain's there, so it counts for the crop's extent."""
    raw, centres, heart = _moved_slice()
    found = preprocess.locate(raw)
    assert found.method == "blood_pool" and 3 not in found.slices and len(found.slices) == len(centres) - 1, found
    half = preprocess.crop_spacing(raw, found.center, DataConfig(), found) * (DataConfig().crop - 3) / 2
    reach = max(np.hypot(c[0] - found.center[0], c[1] - found.center[1]) + heart for c in centres) * 1.5
    assert half >= reach, (half, reach)  # the moved slice's epicardium fits


def test_a_slice_the_breath_hold_moved_between_found_slices_counts_for_the_centre() -> None:
    """The labels' centre averages every slice, the moved one too (3.75 mm from the others' here); the moved
    slice lies between two found slices, so its cavity counts for the centre (patient014: 8.1 -> 1.9 mm)."""
    raw, centres, _ = _moved_slice()
    found = preprocess.locate(raw)
    want = np.mean(centres, axis=0)
    assert np.hypot(found.center[0] - want[0], found.center[1] - want[1]) * 1.5 <= 1.5, (found.center, want)


def test_an_end_slices_merged_pool_reaching_far_beyond_the_lv_does_not_size_the_crop() -> None:
    """On the last slice the LV's pool merged with a neighbouring chamber into one large round pool that
    overlaps the LV's but reaches 36 mm farther than any pool of the chain; counted for the extent, it
    doubled the crop (held-out patient096: 102 -> 198 mm). The LV on a slice the chain skipped is the chain's
    LV moved by a breath-hold, so it reaches at most a link's length (``JUMP_MM``) beyond the chain's pools."""
    shape, slices, frames, spacing = (128, 128), 8, 8, (1.5, 1.5)
    cine = np.full(shape + (slices, frames), 0.1, dtype=np.float32)
    pool, wall = 22.0, 6.0
    for k in range(slices - 1):
        _beating_lv(cine, k, (64.0, 64.0), pool, wall)
    _beating_lv(cine, slices - 1, (80.0, 64.0), 30.0, wall)  # 45 mm pool centred 24 mm off: the LV's centre inside it
    cine += np.random.default_rng(0).normal(0.0, 0.01, cine.shape).astype(np.float32)
    raw = RawSubject(id="merged", folder=Path("."), cine=cine, cine_affine=np.diag([spacing[0], spacing[1], 8.0, 1.0]),
                     lge=None, lge_affine=None, lge_label=None, ed=0, es=frames // 2)
    found = preprocess.locate(raw)
    assert found.method == "blood_pool" and slices - 1 not in found.slices, found
    half = preprocess.crop_spacing(raw, found.center, DataConfig(), found) * (DataConfig().crop - 3) / 2
    heart = (np.hypot(64.0 - found.center[0], 64.0 - found.center[1]) + pool + wall) * 1.5  # the LV's epicardium
    assert heart <= half <= heart + preprocess.CROP_MARGIN_MM, (half, heart)  # the LV fits, no 36 mm more


def test_a_cavity_dimmer_than_bright_fat_beside_it_is_still_found() -> None:
    """Bright epicardial or chest-wall fat sets the slice's bright level, and blood slowed by trabeculae sits
    below a third of the way from dark to that level: no pool passed on those slices, and the chain ran on
    the other slices only (real patient047: 4 of 9 slices, 6.2 mm off; 4.0 with the lower level, which finds
    the dim cavity)."""
    shape, slices, frames, spacing = (112, 112), 6, 8, (1.5, 1.5)
    cine = np.full(shape + (slices, frames), 0.1, dtype=np.float32)
    lv = (56.0, 60.0)
    for k in range(slices):
        for t in range(frames):
            squeeze = np.sin(np.pi * t / frames)
            cine[_disc(shape, lv, 20.0 - 1.5 * squeeze), k, t] = 0.2  # myocardium
            cine[_disc(shape, lv, 13.0 - 4.0 * squeeze), k, t] = 0.37  # dim blood, largest at ED
        cine[30:36, 15:100, k, :] = 1.0  # a band of fat, still over the cycle
    cine += np.random.default_rng(0).normal(0.0, 0.01, cine.shape).astype(np.float32)
    found = localise.locate_lv(cine, spacing)
    assert found.method == "blood_pool" and len(found.slices) == slices, localise.describe(found)
    assert np.hypot((found.center[0] - lv[0]) * spacing[0], (found.center[1] - lv[1]) * spacing[1]) <= 2.0, found
