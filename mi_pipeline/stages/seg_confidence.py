"""How much to trust a segmentation made from the cine alone (``predict``: no LGE, so no registration QA).

* **Test-time augmentation** (``tta_predict``): the network sees the input as it is and flipped along
  H, W and both (motion-field channels flipped as vectors, as in training); the softmax outputs are
  flipped back and averaged. Reported: the mean predictive entropy over the predicted myocardium
  (nats; 0 = certain, ln 3 = 1.10 = uniform), the share of myocardial pixels where the four passes
  disagree, and the spread (min..max) of the infarct % over the four passes. The averaged softmax
  (``tta_probabilities``) is also what every segmentation is labelled from (``inference``: evaluate,
  predict and the k-fold ensemble's members), so the figures describe the label that is reported.
* **Plausibility** (``shape_figures`` + ``plausibility``): per slice with myocardium, its area (mm^2)
  and mean wall thickness (mm; ring radii from the areas of myocardium + enclosed cavity and of the
  cavity), and whether it is one closed ring. The reference ranges are the 1st..99th percentiles of
  the same figures over the segmentation stage's training targets (``SHAPE_FILE`` beside its log),
  widened by 25 %; without that file, physiological defaults (``DEFAULT_RANGES``). ``implausible``
  is true when more than a third of the slices fall outside (``MAX_OUTSIDE``), or fewer than a quarter
  show a closed ring (``MIN_RINGS``); the slices outside are listed either way (``outside_ranges``).
  Why not any one slice: real hearts vary at the apex and base. A model trained on 70 real ACDC hearts
  put one or two slices of 6 of 20 held-out ACDC hearts and 4 of 7 M&Ms hearts outside its ranges while
  segmenting them well (myocardium Dice 0.74-0.90; thin apical caps, walls just over the limit); the
  phantom-trained model on the same hearts had 2 to all of its slices outside and a closed ring on at
  most one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from mi_pipeline.stages import common

SHAPE_FILE = "target_shape.json"
DEFAULT_RANGES = {"area_mm2": (150.0, 6000.0), "thickness_mm": (2.5, 16.0)}
MAX_OUTSIDE = 1 / 3  # share of the slices with myocardium that may fall outside the ranges
MIN_RINGS = 0.25  # share of them that must show a closed ring
FLIPS = ((False, False), (True, False), (False, True), (True, True))


def _flip_input(x: torch.Tensor, frames: int, fh: bool, fw: bool) -> torch.Tensor:
    """Flip a batch (N, C, H, W): image channels spatially, motion-field pairs as vectors."""
    images = common.flip_image(x[:, :frames], fh, fw)
    if x.shape[1] == frames:
        return images
    n, _, h, w = x.shape
    fields = common.flip_field(x[:, frames:].reshape(n, -1, 2, h, w), fh, fw).reshape(n, -1, h, w)
    return torch.cat([images, fields], dim=1)


def flip_softmax(model: nn.Module, x: torch.Tensor, frames: int, batch: int = 32) -> list[torch.Tensor]:
    """The softmax (N, C, H, W) of the network input ``x`` (N, C, H, W; the first ``frames`` channels are
    the cine) as it is and flipped along H, W and both (``FLIPS``), each flipped back onto ``x``'s grid:
    the passes that test-time augmentation averages (``tta_probabilities``) and compares (``tta_predict``)."""
    device = next(model.parameters()).device
    probs = []
    with torch.no_grad():
        for fh, fw in FLIPS:
            out = []
            for part in common.batched(x.shape[0], batch):
                logits = model(_flip_input(x[part], frames, fh, fw).to(device)).float()
                out.append(common.flip_image(torch.softmax(logits, dim=1), fh, fw).cpu())
            probs.append(torch.cat(out))
    return probs


def average(passes: list[torch.Tensor]) -> torch.Tensor:
    """The flip-averaged softmax (N, C, H, W) of ``flip_softmax``'s passes."""
    return torch.stack(passes).mean(dim=0)


def tta_probabilities(model: nn.Module, x: torch.Tensor, frames: int, batch: int = 32) -> torch.Tensor:
    """The flip-averaged softmax (N, C, H, W): what ``inference`` labels every subject from (evaluate and
    predict alike). Deterministic: the same four passes in the same order, no random draw."""
    return average(flip_softmax(model, x, frames, batch))


def tta_predict(model: nn.Module, x: torch.Tensor, frames: int, batch: int = 32) -> tuple[np.ndarray, dict[str, Any]]:
    """Classes (N, H, W) uint8 from the flip-averaged softmax, and the uncertainty figures."""
    return tta_figures(flip_softmax(model, x, frames, batch))


def tta_figures(probs: list[torch.Tensor]) -> tuple[np.ndarray, dict[str, Any]]:
    """Classes (N, H, W) uint8 from ``flip_softmax``'s passes, and the uncertainty figures they give
    (predict hands in the passes its label came from, so none runs twice)."""
    members = [p.argmax(dim=1) for p in probs]
    mean = average(probs)
    pred = mean.argmax(dim=1)
    myo = pred > 0
    entropy = -(mean * mean.clamp_min(1e-8).log()).sum(dim=1)
    stacked = torch.stack(members)
    disagree = (stacked != stacked[0:1]).any(dim=0)
    pcts = []
    for m in members:
        n_myo = int((m > 0).sum())
        pcts.append(100.0 * int((m == 2).sum()) / n_myo if n_myo else 0.0)
    n_myo = int(myo.sum())
    figures = {
        "method": "test-time augmentation: identity + 3 flips, softmax averaged",
        "mean_entropy_myocardium": round(float(entropy[myo].mean()) if n_myo else 0.0, 4),
        "disagreement_percent_myocardium": round(100.0 * float(disagree[myo].float().mean()) if n_myo else 0.0, 2),
        "infarct_percent_range": [round(min(pcts), 2), round(max(pcts), 2)],
    }
    return pred.numpy().astype(np.uint8), figures


def shape_figures(pred: np.ndarray, spacing_mm: float | np.ndarray) -> list[dict[str, Any]]:
    """Per slice with myocardium (classes 1|2 of ``pred`` (Z, H, W)): area, thickness, closed ring.
    ``spacing_mm``: the in-plane pixel size, one for the stack or one per slice (training targets come
    from crops of different widths)."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (pred.shape[0],))
    rows = []
    for k in range(pred.shape[0]):
        myo = pred[k] > 0
        if not myo.any():
            continue
        px = float(spacing[k]) ** 2
        filled = ndimage.binary_fill_holes(myo)
        cavity = filled & ~myo
        _, components = ndimage.label(myo)
        r_epi, r_endo = math.sqrt(filled.sum() * px / math.pi), math.sqrt(cavity.sum() * px / math.pi)
        rows.append({"slice": k, "area_mm2": round(float(myo.sum() * px), 1),
                     "thickness_mm": round(r_epi - r_endo, 2),
                     "closed_ring": bool(cavity.any() and components == 1)})
    return rows


def reference_ranges(rows: list[dict[str, Any]], widen: float = 0.25) -> dict[str, tuple[float, float]]:
    """1st..99th percentiles of the training targets' figures, widened by ``widen`` of their span each side;
    the lower end never below ``1 - widen`` of the smallest seen (a wide span, e.g. apical and basal slices
    together, would otherwise take it below zero, and then a crumb of myocardium would pass)."""
    out = {}
    for key in DEFAULT_RANGES:
        values = np.asarray([r[key] for r in rows if r["closed_ring"]], dtype=np.float64)
        if values.size < 5:
            out[key] = DEFAULT_RANGES[key]
            continue
        lo, hi = np.percentile(values, [1, 99])
        span = max(hi - lo, 1e-6)
        out[key] = (round(float(max(lo - widen * span, (1 - widen) * lo)), 2), round(float(hi + widen * span), 2))
    return out


def plausibility(rows: list[dict[str, Any]], ranges: dict[str, tuple[float, float]], source: str) -> dict[str, Any]:
    """Whether the predicted myocardium looks like what training saw; the reasons when not."""
    misses = [[f"slice {r['slice']}: {key} {r[key]} outside {lo}..{hi}"
               for key, (lo, hi) in ranges.items() if not lo <= r[key] <= hi] for r in rows]
    outside = [miss for row in misses for miss in row]
    slices_outside = sum(bool(row) for row in misses)
    n = len(rows)
    rings = sum(r["closed_ring"] for r in rows)
    reasons = []
    if not rows:
        reasons.append("no myocardium predicted on any slice")
    elif rings == 0:
        reasons.append("no slice shows a closed myocardial ring")
    elif rings < MIN_RINGS * n:
        reasons.append(f"a closed myocardial ring on only {rings} of {n} slices")
    if rows and slices_outside > MAX_OUTSIDE * n:
        reasons.append(f"{slices_outside} of {n} slices outside the training targets' shape ranges")
        reasons += outside
    return {"implausible": bool(reasons), "reasons": reasons[:10], "outside_ranges": outside[:10],
            "reference": source, "ranges": {k: list(v) for k, v in ranges.items()}, "per_slice": rows}
