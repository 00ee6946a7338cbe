"""Predict's confidence (issue 14): TTA uncertainty figures and the plausibility flag."""

from __future__ import annotations

import numpy as np
import torch

from mi_pipeline.stages import common, seg_confidence
from mi_pipeline.stages.segmentation import build_model


def _ring(r_in: float, r_out: float, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - 15.5, xx - 15.5)
    return ((r >= r_in) & (r < r_out)).astype(np.uint8)


def test_tta_figures(tiny_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval()
    x = torch.rand(3, tiny_cfg.data.frames * 3, 32, 32)
    pred, figures = seg_confidence.tta_predict(model, x, tiny_cfg.data.frames)
    assert pred.shape == (3, 32, 32) and pred.dtype == np.uint8
    assert 0.0 <= figures["disagreement_percent_myocardium"] <= 100.0
    assert 0.0 <= figures["mean_entropy_myocardium"] <= np.log(3) + 1e-6
    lo, hi = figures["infarct_percent_range"]
    assert 0.0 <= lo <= hi <= 100.0


def test_tta_probabilities_are_deterministic_flip_equivariant_and_what_tta_predict_labels(tiny_cfg):
    """The flip-averaged softmax every label comes from (``inference``): the same twice, a flipped input
    gives the flipped output (motion-field channels flipped as vectors), and ``tta_predict``'s label
    (whose uncertainty predict reports) is its argmax."""
    torch.manual_seed(0)
    frames = tiny_cfg.data.frames
    model = build_model(tiny_cfg).eval()
    x = torch.rand(3, frames * 3, 32, 32)
    probs = seg_confidence.tta_probabilities(model, x, frames)
    assert probs.shape == (3, 3, 32, 32)
    assert torch.equal(probs, seg_confidence.tta_probabilities(model, x, frames))
    torch.testing.assert_close(seg_confidence.tta_probabilities(model, x, frames, batch=2), probs)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3, 32, 32))
    for fh, fw in seg_confidence.FLIPS[1:]:
        flipped = seg_confidence.tta_probabilities(model, seg_confidence._flip_input(x, frames, fh, fw), frames)
        torch.testing.assert_close(common.flip_image(flipped, fh, fw), probs, atol=1e-6, rtol=0)
    pred, _ = seg_confidence.tta_predict(model, x, frames)
    assert np.array_equal(pred, probs.argmax(dim=1).numpy())


def test_a_ring_is_plausible_a_blob_or_a_giant_is_not():
    training = np.stack([_ring(5 + 0.3 * k, 10 + 0.3 * k) for k in range(8)])
    ranges = seg_confidence.reference_ranges(seg_confidence.shape_figures(training, 1.6))
    ring = seg_confidence.shape_figures(_ring(6, 11)[None], 1.6)
    assert ring[0]["closed_ring"] and 6.0 <= ring[0]["thickness_mm"] <= 10.0
    assert not seg_confidence.plausibility(ring, ranges, "test")["implausible"]
    blob = seg_confidence.shape_figures(_ring(0, 6)[None], 1.6)
    verdict = seg_confidence.plausibility(blob, ranges, "test")
    assert verdict["implausible"] and "closed myocardial ring" in verdict["reasons"][0]
    thick = seg_confidence.shape_figures(_ring(3, 15)[None], 1.6)
    assert seg_confidence.plausibility(thick, ranges, "test")["implausible"]
    assert seg_confidence.plausibility([], ranges, "test")["reasons"] == ["no myocardium predicted on any slice"]


def test_one_or_two_unusual_slices_of_a_stack_are_listed_but_a_third_or_no_rings_make_it_implausible():
    """Real hearts vary at the apex and base: a thin apical cap or a thick basal slice beyond the training
    ranges is listed, not a verdict; most slices beyond them, or rings on few, is (a model on images unlike
    its training, e.g. a phantom-trained model on real cines)."""
    training = np.stack([_ring(5 + 0.3 * k, 10 + 0.3 * k) for k in range(8)])
    ranges = seg_confidence.reference_ranges(seg_confidence.shape_figures(training, 1.6))
    good, thick, blob = _ring(6, 11), _ring(3, 15), _ring(0, 6)
    one_thick = seg_confidence.shape_figures(np.stack([thick] + [good] * 8), 1.6)
    verdict = seg_confidence.plausibility(one_thick, ranges, "test")
    assert not verdict["implausible"] and verdict["reasons"] == []
    assert verdict["outside_ranges"] and all(r.startswith("slice 0: ") for r in verdict["outside_ranges"])
    four_thick = seg_confidence.shape_figures(np.stack([thick] * 4 + [good] * 5), 1.6)
    verdict = seg_confidence.plausibility(four_thick, ranges, "test")
    assert verdict["implausible"] and verdict["reasons"][0] == "4 of 9 slices outside the training targets' shape ranges"
    few_rings = seg_confidence.shape_figures(np.stack([good] + [blob] * 7), 1.6)
    verdict = seg_confidence.plausibility(few_rings, ranges, "test")
    assert verdict["implausible"] and verdict["reasons"][0] == "a closed myocardial ring on only 1 of 8 slices"


def test_the_lower_end_of_a_wide_reference_range_stays_above_zero_so_a_crumb_is_implausible():
    """Apical and basal training slices together span more than their smallest value: a range widened by
    a share of that span alone went below zero (seen on real M&Ms targets: area -297 mm^2)."""
    training = np.stack([_ring(2 + 1.5 * k, 4 + 3.0 * k) for k in range(8)])
    ranges = seg_confidence.reference_ranges(seg_confidence.shape_figures(training, 1.6))
    assert all(lo > 0 for lo, _ in ranges.values()), ranges
    crumb = seg_confidence.shape_figures(_ring(1, 2.2)[None], 1.6)
    assert crumb[0]["closed_ring"], crumb
    verdict = seg_confidence.plausibility(crumb, ranges, "test")
    assert verdict["implausible"] and "area_mm2" in " ".join(verdict["reasons"]), verdict

