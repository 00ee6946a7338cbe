"""Metrics against independent implementations (plain numpy / Python loops, no MONAI)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mi_pipeline import metrics
from mi_pipeline.stages import common


def _blob(rng: np.random.Generator, shape=(4, 24, 24)) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(0.7, 2.5, 2.5))
    return noise > np.percentile(noise, 80)


@pytest.mark.parametrize("as_array", [np.asarray, torch.from_numpy], ids=["numpy", "torch"])
def test_dice_matches_numpy_and_monai(as_array) -> None:
    """One Dice for evaluation and for the stages' validation: exact counts, MONAI's value, None when undefined."""
    from monai.metrics import compute_dice

    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = _blob(rng), _blob(rng)
        ref = 2 * (a & b).sum() / (a.sum() + b.sum())
        monai = float(compute_dice(torch.from_numpy(a[None, None].astype(np.float32)),
                                   torch.from_numpy(b[None, None].astype(np.float32)), include_background=True))
        assert metrics.dice(as_array(a), as_array(b)) == pytest.approx(ref, abs=1e-12)
        assert metrics.dice(as_array(a), as_array(b)) == pytest.approx(monai, abs=1e-6)
    empty = np.zeros((2, 4, 4), bool)
    assert metrics.dice(as_array(empty), as_array(empty)) is None
    assert metrics.dice(as_array(empty), as_array(~empty)) == 0.0


def _edges(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _hd95_reference(a: np.ndarray, b: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float:
    pa = np.argwhere(_edges(a)) * np.asarray(spacing_zyx)
    pb = np.argwhere(_edges(b)) * np.asarray(spacing_zyx)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_hd95_matches_bruteforce_in_mm() -> None:
    rng = np.random.default_rng(1)
    spacing = (1.5, 1.25, 8.0)  # row, col, slice
    for _ in range(4):
        a, b = _blob(rng), _blob(rng)
        ref = _hd95_reference(a, b, (spacing[2], spacing[0], spacing[1]))
        assert metrics.hd95_mm(a, b, spacing) == pytest.approx(ref, rel=1e-5)
    assert metrics.hd95_mm(np.zeros((2, 4, 4), bool), a[:2, :4, :4] | True, spacing) is None


def test_roc_auc_matches_mann_whitney() -> None:
    rng = np.random.default_rng(2)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.random(60) + 0.4 * labels, 1)  # ties included
    pos, neg = scores[labels], scores[~labels]
    ref = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert metrics.roc_auc(scores, labels) == pytest.approx(ref, abs=1e-9)
    assert metrics.roc_auc([0.1, 0.2], [True, True]) is None


def _aha_reference(ref: np.ndarray) -> np.ndarray:
    z, h, w = ref.shape
    slices = [k for k in range(z) if ref[k].any()]
    areas = [int(ref[k].sum()) for k in slices]
    half = len(slices) // 2
    if sum(areas[:half]) < sum(areas[len(slices) - half:]):
        slices = slices[::-1]
    n = len(slices)
    out = np.zeros(ref.shape, dtype=int)
    for pos, k in enumerate(slices):
        # thirds as numpy.array_split does: the first n % 3 parts get one more
        sizes = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
        level = 0 if pos < sizes[0] else (1 if pos < sizes[0] + sizes[1] else 2)
        count, first = [(6, 1), (6, 7), (4, 13)][level]
        pts = [(r, c) for r in range(h) for c in range(w) if ref[k, r, c]]
        cr = sum(p[0] for p in pts) / len(pts)
        cc = sum(p[1] for p in pts) / len(pts)
        for r in range(h):
            for c in range(w):
                angle = math.degrees(math.atan2(-(r - cr), c - cc)) % 360.0
                out[k, r, c] = first + min(int(angle // (360.0 / count)), count - 1)
    return out


def _ring(z: int = 6, size: int = 32, sector=(0.0, 60.0)) -> tuple[np.ndarray, np.ndarray]:
    rr, cc = np.mgrid[0:size, 0:size]
    dy, dx = rr - 15.7, cc - 16.2
    radius = np.hypot(dy, dx)
    angle = np.degrees(np.arctan2(-dy, dx)) % 360
    myo = np.zeros((z, size, size), bool)
    for k in range(z):
        r_in = 8 - 0.8 * k  # base (slice 0) is largest
        myo[k] = (radius >= r_in) & (radius < r_in + 4)
    inf = myo & ((angle - sector[0]) % 360 < sector[1] - sector[0])
    return myo, inf


def test_aha_map_matches_loop_reference() -> None:
    rng = np.random.default_rng(3)
    myo, _ = _ring()
    assert np.array_equal(metrics.aha_segment_map(myo), _aha_reference(myo))
    for _ in range(2):
        blob = _blob(rng, (5, 20, 20))
        assert np.array_equal(metrics.aha_segment_map(blob), _aha_reference(blob))
    flipped = myo[::-1].copy()  # apex first: levels follow the area, not the slice order
    assert np.array_equal(metrics.aha_segment_map(flipped)[::-1], metrics.aha_segment_map(myo))


def test_segment_extents_and_scores() -> None:
    myo, inf = _ring(sector=(0.0, 60.0))
    seg = metrics.aha_segment_map(myo)
    ext = metrics.segment_extents(seg, myo, inf)
    assert ext[1] == pytest.approx(1.0) and ext[7] == pytest.approx(1.0) and ext[13] == pytest.approx(0.667, abs=0.05)
    assert all(ext[s] == pytest.approx(0.0) for s in (2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 15, 16))
    # reference: count by hand
    for s in range(1, 17):
        m = (seg == s) & myo
        assert ext[s] == pytest.approx((m & inf).sum() / m.sum())
    labels, scores = metrics.segment_scores(myo, inf, myo, inf)
    assert len(labels) == 16 and sum(labels) == 3
    assert metrics.roc_auc(scores, labels) == 1.0
    assert metrics.infarct_percent(myo, inf) == pytest.approx(100 * inf.sum() / myo.sum())


def test_folding_matches_numpy_jacobian() -> None:
    rng = np.random.default_rng(4)
    ddf = ndimage.gaussian_filter(rng.normal(size=(3, 2, 20, 20)), sigma=(0, 0, 1.5, 1.5)) * 6
    mask = rng.random((3, 20, 20)) < 0.5
    g_h = np.gradient(ddf, axis=2)
    g_w = np.gradient(ddf, axis=3)
    det = (1 + g_h[:, 0]) * (1 + g_w[:, 1]) - g_w[:, 0] * g_h[:, 1]
    ref = 100 * ((det <= 0) & mask).sum() / mask.sum()
    assert ref > 0
    got = common.folding_percent(torch.from_numpy(ddf).float(), torch.from_numpy(mask))
    assert got == pytest.approx(ref, abs=1e-6)


def test_summary() -> None:
    s = metrics.summary([1.0, None, 3.0])
    assert s == {"mean": 2.0, "sd": 1.0, "n": 2}
    assert metrics.summary([None])["mean"] is None
