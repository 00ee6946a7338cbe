"""Quality measures per stage (motion, registration, segmentation, infarct size), as the field computes them.

Dice is counted exactly here (checked against MONAI's ``compute_dice``); MONAI provides the 95th-percentile Hausdorff
distance in mm
(``compute_hausdorff_distance`` with ``spacing``) and ROC AUC (``compute_roc_auc``); they are used
as they are. What MONAI has no notion of is written here and checked against independent
implementations in ``tests/test_metrics.py``: infarct size as % of myocardium, the AHA 16-segment
model (6/6/4 segments of 60°/60°/90° at basal/mid/apical levels) and per-segment infarct extent.

Masks are numpy boolean arrays shaped (Z, H, W) (slices, rows, columns) of one subject; spacing is
(row, col, slice) mm as the cache stores it.

AHA geometry without an RV landmark: the level of a slice is its third of the slices that show
myocardium (base first: the end with the larger myocardial area is taken as the base); its sector
is the angle around the slice's myocardial centroid, counter-clockwise from the +column direction as
the image is displayed (row 0 on top), 60° (or 90° apically) wide from ``AHA_START_DEG``. On the
canonical crop grid (preprocess.canonical_inplane) that orientation is the same for every subject,
so segments are comparable between truth and prediction and across subjects; they are not anchored
to the RV insertion points as a reader would place them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

AHA_START_DEG = 0.0
AHA_LEVELS = (("basal", 6, 1), ("mid", 6, 7), ("apical", 4, 13))  # name, segments, first id
INFARCT_SEGMENT_THRESHOLD = 0.10  # a segment is infarcted when >= 10 % of its myocardium is infarct


def _onehot(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def dice(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> float | None:
    """Dice of two boolean masks (numpy or torch, any shape); None when both are empty (undefined).

    Counted exactly (2|A∩B| / (|A|+|B|)), so validation metrics that pick a best model do not
    depend on float rounding; ``tests/test_metrics.py`` checks it against MONAI's ``compute_dice``.
    """
    p, t = _as_bool(pred), _as_bool(truth)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return None
    return 2.0 * int((p & t).sum()) / total


def _as_bool(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        return mask.detach().cpu().bool().numpy()
    return np.asarray(mask, bool)


def hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float | None:
    """95th-percentile symmetric Hausdorff distance in mm (MONAI); None when either mask is empty.

    ``spacing`` is (row, col, slice) mm; masks are (Z, H, W).
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() or not truth.any():
        return None
    from monai.metrics import compute_hausdorff_distance

    zyx = [float(spacing[2]), float(spacing[0]), float(spacing[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_hausdorff_distance(_onehot(pred), _onehot(truth), include_background=True, percentile=95,
                                           spacing=zyx)
    value = float(value.reshape(-1)[0])
    return value if math.isfinite(value) else None


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve (MONAI ``compute_roc_auc``); None unless both classes occur."""
    labels_arr = np.asarray(labels, dtype=bool)
    if labels_arr.size == 0 or labels_arr.all() or not labels_arr.any():
        return None
    from monai.metrics import compute_roc_auc

    return float(compute_roc_auc(torch.as_tensor(np.asarray(scores, dtype=np.float64)),
                                 torch.as_tensor(labels_arr.astype(np.float64))))


def infarct_percent(myo: np.ndarray, infarct: np.ndarray) -> float:
    """Infarct as % of the myocardium (``myo`` includes the infarct); 0 without myocardium."""
    total = int(np.count_nonzero(myo))
    return 100.0 * int(np.count_nonzero(np.asarray(infarct, bool) & np.asarray(myo, bool))) / total if total else 0.0


def level_of_slices(myo: np.ndarray) -> list[str | None]:
    """basal / mid / apical (or None: no myocardium) for every slice of a (Z, H, W) mask."""
    areas = np.asarray(myo, bool).reshape(myo.shape[0], -1).sum(axis=1)
    idx = [int(k) for k in np.nonzero(areas)[0]]
    levels: list[str | None] = [None] * myo.shape[0]
    if not idx:
        return levels
    half = len(idx) // 2
    if areas[idx[:half]].sum() < areas[idx[len(idx) - half:]].sum():
        idx = idx[::-1]  # the larger end is the base
    for name, part in zip(("basal", "mid", "apical"), np.array_split(np.asarray(idx), 3)):
        for k in part.tolist():
            levels[k] = name
    return levels


def aha_segment_map(reference_myo: np.ndarray) -> np.ndarray:
    """AHA segment id (1..16, 0 = none) for every pixel of every slice of a (Z, H, W) grid.

    Geometry (levels, centres) comes from ``reference_myo``; the map covers every pixel of a slice
    with myocardium, so it can be applied to any other mask on the same grid.
    """
    ref = np.asarray(reference_myo, bool)
    z, h, w = ref.shape
    out = np.zeros((z, h, w), dtype=np.int16)
    levels = level_of_slices(ref)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    spec = {name: (n, first) for name, n, first in AHA_LEVELS}
    for k, level in enumerate(levels):
        if level is None:
            continue
        rr, cc = np.nonzero(ref[k])
        cr, cc0 = rr.mean(), cc.mean()
        angle = np.degrees(np.arctan2(-(rows - cr), cols - cc0))
        n, first = spec[level]
        sector = np.floor(((angle - AHA_START_DEG) % 360.0) / (360.0 / n)).astype(np.int16)
        out[k] = first + np.minimum(sector, n - 1)
    return out


def segment_extents(segments: np.ndarray, myo: np.ndarray, infarct: np.ndarray) -> dict[int, float | None]:
    """Infarct extent (fraction 0..1 of the segment's myocardium) per AHA segment 1..16.

    None for a segment with no myocardium in ``myo`` (or not present in ``segments``).
    """
    myo, infarct = np.asarray(myo, bool), np.asarray(infarct, bool) & np.asarray(myo, bool)
    seg_myo = np.bincount(segments[myo].ravel(), minlength=17)
    seg_inf = np.bincount(segments[infarct].ravel(), minlength=17)
    return {s: (float(seg_inf[s]) / float(seg_myo[s]) if seg_myo[s] else None) for s in range(1, 17)}


def segment_scores(truth_myo: np.ndarray, truth_infarct: np.ndarray, pred_myo: np.ndarray,
                   pred_infarct: np.ndarray) -> tuple[list[bool], list[float]]:
    """Per AHA segment with true myocardium: (infarcted in truth, predicted extent) for the AUC.

    Segments come from the true myocardium; the predicted extent is predicted infarct / predicted
    myocardium inside the segment's sector (0 where nothing is predicted there).
    """
    segments = aha_segment_map(truth_myo)
    truth = segment_extents(segments, truth_myo, truth_infarct)
    pred = segment_extents(segments, pred_myo, pred_infarct)
    labels, scores = [], []
    for s in range(1, 17):
        if truth[s] is None:
            continue
        labels.append(truth[s] >= INFARCT_SEGMENT_THRESHOLD)
        scores.append(pred[s] if pred[s] is not None else 0.0)
    return labels, scores


def summary(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """mean, sd (population) and n of the defined values."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(np.mean(kept)), "sd": float(np.std(kept)), "n": len(kept)}


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation (ties share ranks); None with fewer than 3 pairs or a constant side."""
    if len(a) != len(b) or len(a) < 3:
        return None
    from scipy.stats import spearmanr

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)
