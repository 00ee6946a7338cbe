"""Metric and warping helpers, checked against independent (numpy) computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mi_pipeline.stages import common
from mi_pipeline.stages.registry import REGISTRY, make_task


def test_mean_ignores_undefined_values():
    assert common.mean([None, 0.5, 1.0]) == 0.75 and common.mean([None], default=-1.0) == -1.0


def _numpy_jacobian_det(ddf: np.ndarray) -> np.ndarray:
    """Independent: det(I + grad u) with numpy's gradient (channel 0 along rows, 1 along columns)."""
    out = []
    for u in ddf:
        d0_dh, d0_dw = np.gradient(u[0])
        d1_dh, d1_dw = np.gradient(u[1])
        out.append((1 + d0_dh) * (1 + d1_dw) - d0_dw * d1_dh)
    return np.stack(out)


def test_jacobian_determinant_matches_numpy_and_affine_closed_form():
    rng = np.random.default_rng(1)
    ddf = rng.normal(0, 1.5, (2, 2, 12, 10))
    got = common.jacobian_determinant(torch.from_numpy(ddf)).numpy()
    np.testing.assert_allclose(got, _numpy_jacobian_det(ddf), atol=1e-10)
    # linear field u(x) = A x: det(I + A) everywhere
    a = np.array([[0.2, -0.3], [0.1, -0.5]])
    hh, ww = np.mgrid[0:8, 0:8].astype(float)
    lin = np.stack([a[0, 0] * hh + a[0, 1] * ww, a[1, 0] * hh + a[1, 1] * ww])[None]
    det = common.jacobian_determinant(torch.from_numpy(lin))
    np.testing.assert_allclose(det.numpy(), np.linalg.det(np.eye(2) + a), atol=1e-10)


def test_folding_percent_counts_folded_pixels_inside_mask():
    ddf = torch.zeros(1, 2, 10, 10, dtype=torch.float64)
    hh = torch.arange(10, dtype=torch.float64).view(10, 1).expand(10, 10)
    ddf[0, 0] = -2.0 * hh  # d u_h / d h = -2 -> det = -1: every pixel folds
    assert common.folding_percent(ddf) == 100.0
    ddf[0, 0, :, 5:] = 0.0
    det = _numpy_jacobian_det(ddf.numpy())
    mask = torch.zeros(1, 10, 10, dtype=torch.bool)
    mask[0, 2:8, 1:9] = True
    expected = 100.0 * ((det <= 0) & mask.numpy()).sum() / mask.sum().item()
    assert abs(common.folding_percent(ddf, mask) - expected) < 1e-9
    assert common.folding_percent(torch.zeros(1, 2, 6, 6)) == 0.0


def test_warp_pulls_by_the_displacement_and_labels_stay_labels():
    image = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    ddf = torch.zeros(1, 2, 8, 8)
    ddf[:, 1] = 1.0  # pull from one column to the right
    out = common.warp(image, ddf)
    torch.testing.assert_close(out[..., :-1], image[..., 1:])
    ddf = torch.zeros(1, 2, 8, 8)
    ddf[:, 0] = -2.0  # pull from two rows up
    torch.testing.assert_close(common.warp(image, ddf)[..., 2:, :], image[..., :-2, :])
    labels = torch.randint(0, 4, (2, 8, 8))
    assert torch.equal(common.warp_labels(labels, torch.zeros(2, 2, 8, 8)), labels)
    shifted = common.warp_labels(labels, torch.full((2, 2, 8, 8), 1.0))
    assert torch.equal(shifted[:, :-1, :-1], labels[:, 1:, 1:])


def test_compose_equals_warping_twice():
    # linear image and fields: bilinear interpolation is exact, so the identity must hold exactly
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    image = (0.3 * yy + 0.7 * xx)[None, None].double()
    first = torch.stack([0.1 * xx - 0.5, 0.2 * yy + 0.05 * xx])[None].double()
    second = torch.stack([torch.full_like(xx, 1.5), torch.full_like(xx, -0.75)])[None].double()
    twice = common.warp(common.warp(image, first), second)
    once = common.warp(image, common.compose(first, second))
    inner = (..., slice(4, -4), slice(4, -4))
    torch.testing.assert_close(once[inner], twice[inner], atol=1e-5, rtol=0)
    naive = common.warp(image, first + second)  # summing fields is not composing them
    assert (naive - twice)[inner].abs().max() > 0.05


def test_flip_field_commutes_with_warp():
    torch.manual_seed(0)
    image = torch.rand(1, 1, 12, 12)
    ddf = torch.randn(1, 2, 12, 12) * 0.3
    for fh, fw in ((True, False), (False, True), (True, True)):
        a = common.flip_image(common.warp(image, ddf), fh, fw)
        b = common.warp(common.flip_image(image, fh, fw), common.flip_field(ddf[0], fh, fw)[None])
        torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_task_registry(tiny_cfg, tmp_path):
    assert tuple(REGISTRY) == ("motion", "registration", "segmentation")
    for stage, entry in REGISTRY.items():
        task = make_task(stage, tiny_cfg, tmp_path)
        assert isinstance(task, entry.task) and task.name == stage and task.metric_name
        assert isinstance(entry.build_model(tiny_cfg), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown stage"):
        make_task("data", tiny_cfg, tmp_path)
