"""Registration stage: shapes, keys, param groups, learning, determinism, optional mask Dice."""

from __future__ import annotations

import pytest
import torch

from mi_pipeline.config import load_config
from mi_pipeline.errors import ConfigError
from mi_pipeline.stages.registration import (
    RegistrationTask,
    build_model,
    lge_labels_in_cine,
)
from mi_pipeline.stages.registry import make_task

CPU = torch.device("cpu")


def _task(cfg, run_dir) -> RegistrationTask:
    task = make_task("registration", cfg, run_dir)
    assert isinstance(task, RegistrationTask)
    task.setup(CPU)
    return task


def test_batch_loss_validation_and_param_groups(tiny_cfg, synthetic_run):
    task = _task(tiny_cfg, synthetic_run)
    assert task.num_train_samples() == 4 * 2
    batch = task.make_batch([0, 3], torch.Generator().manual_seed(0), CPU)
    assert batch["moving"].shape == batch["fixed"].shape == (2, 1, 32, 32)
    torch.manual_seed(0)
    model = task.build_model()
    total, affine, local = model(batch["moving"], batch["fixed"])
    assert total.shape == affine.shape == local.shape == (2, 2, 32, 32)
    assert total.abs().max() < 1e-6  # starts at the identity
    loss, parts = task.loss(model, batch)
    assert torch.isfinite(loss) and {"similarity", "affine_similarity", "smoothness"} <= set(parts)
    groups = task.param_groups(model, 1e-3)
    assert [g["lr"] for g in groups] == [tiny_cfg.registration.affine_lr, 1e-3]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    with torch.no_grad():
        metrics = task.validate(model.eval(), CPU)
    assert {"myo_dice", "myo_dice_before", "folding_percent", "val_loss"} <= set(metrics)
    assert abs(metrics["myo_dice"] - metrics["myo_dice_before"]) < 1e-9
    rows = range(len(task.val))
    moving_label = task.val.rows("lge_label", rows).long()
    warped = lge_labels_in_cine(model, task.val.rows("lge", rows), moving_label, task.val.rows("cine", rows)[:, 0])
    assert warped.shape == moving_label.shape and int(warped.max()) <= 3


def test_a_few_steps_reduce_the_loss(tiny_cfg, synthetic_run):
    task = _task(tiny_cfg, synthetic_run)
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(task.param_groups(model, 3e-3))
    batch = task.make_batch(list(range(8)), torch.Generator().manual_seed(0), CPU)
    first = task.loss(model, batch)[0].item()
    for _ in range(15):
        loss, _ = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert task.loss(model, batch)[0].item() < first - 1e-3


def test_determinism(tiny_cfg, synthetic_run):
    task = _task(tiny_cfg, synthetic_run)
    a = task.make_batch([1, 2, 5], torch.Generator().manual_seed(11), CPU)
    b = task.make_batch([1, 2, 5], torch.Generator().manual_seed(11), CPU)
    c = task.make_batch([1, 2, 5], torch.Generator().manual_seed(12), CPU)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["moving"], c["moving"])  # augmentation does use the generator
    torch.manual_seed(5)
    m1 = build_model(tiny_cfg)
    torch.manual_seed(5)
    m2 = build_model(tiny_cfg)
    assert all(torch.equal(x, y) for x, y in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_mask_dice_term(synthetic_run, tmp_path, tiny_overrides, write_cache):
    cfg = load_config(None, tiny_overrides + ["registration.mask_dice_weight=0.5"])
    task = _task(cfg, synthetic_run)
    batch = task.make_batch([0, 1], torch.Generator().manual_seed(0), CPU)
    assert batch["moving_label"].shape == batch["fixed_label"].shape == (2, 32, 32)
    torch.manual_seed(0)
    _, parts = task.loss(task.build_model(), batch)
    assert 0.0 <= parts["mask_dice"] <= 1.0
    write_cache(tmp_path, labels=False)
    with pytest.raises(ConfigError, match="mask_dice_weight"):
        _task(cfg, tmp_path)


def test_refinement_improves_a_shifted_pair():
    """Test-time refinement (registration.refine_steps) recovers a shift the (untrained) net misses."""
    import numpy as np

    from mi_pipeline.metrics import dice
    from mi_pipeline.stages import common
    from mi_pipeline.stages.registration import refine_ddf

    def ring(cy: float, cx: float) -> np.ndarray:
        yy, xx = np.mgrid[0:32, 0:32]
        r = np.hypot(yy - cy, xx - cx)
        lab = np.zeros((32, 32), np.int64)
        lab[r < 11] = 2
        lab[r < 7] = 1
        return lab

    rng = np.random.default_rng(0)
    fixed_lab, moving_lab = ring(16.0, 16.0), ring(18.5, 14.0)
    cine = np.choose(fixed_lab, [0.15, 0.9, 0.4]) + rng.normal(0, 0.02, (32, 32))
    lge = np.choose(moving_lab, [0.25, 0.6, 0.05]) + rng.normal(0, 0.02, (32, 32))
    fixed = torch.from_numpy(cine).float()[None, None]
    moving = torch.from_numpy(lge).float()[None, None]
    zero = torch.zeros(1, 2, 32, 32)
    refined = refine_ddf(moving, fixed, zero, steps=80, lr=0.1, smooth_weight=1.0)
    assert torch.equal(refine_ddf(moving, fixed, zero, steps=0, lr=0.1, smooth_weight=1.0), zero)
    myo_fixed = common.myo(torch.from_numpy(fixed_lab)[None].long())
    moving_labels = torch.from_numpy(moving_lab)[None].long()
    before = dice(common.myo(moving_labels), myo_fixed)
    after = dice(common.myo(common.warp_labels(moving_labels, refined)), myo_fixed)
    assert after > before + 0.08


def test_refinement_uses_its_own_smoothness(monkeypatch, tiny_overrides):
    """``labels_in_cine`` regularises the refinement with refine_smooth_weight, not training's smooth_weight."""
    from mi_pipeline.stages import registration

    cfg = load_config(None, tiny_overrides + ["registration.refine_steps=3", "registration.smooth_weight=0.5",
                                              "registration.refine_smooth_weight=7.0"])
    seen = {}

    def spy(moving, fixed, ddf, steps, lr, smooth_weight):
        seen.update(steps=steps, smooth_weight=smooth_weight)
        return ddf

    monkeypatch.setattr(registration, "refine_ddf", spy)
    torch.manual_seed(0)
    model = build_model(cfg)
    size = cfg.data.crop
    registration.labels_in_cine(cfg, model, torch.rand(2, size, size), torch.zeros(2, size, size, dtype=torch.long),
                                torch.rand(2, size, size))
    assert seen == {"steps": 3, "smooth_weight": 7.0}
    with pytest.raises(ConfigError, match="refine_smooth_weight"):
        load_config(None, tiny_overrides + ["registration.refine_smooth_weight=-1"])


def test_without_cine_labels_validation_names_its_label_free_figure(tiny_cfg, tmp_path, write_cache):
    """No cine labels: no 'myo_dice' (it would not be a Dice); edge alignment decides, beside its
    no-registration value, and a network that does not beat no registration is warned about."""
    write_cache(tmp_path, labels=False)
    task = _task(tiny_cfg, tmp_path)
    assert task.metric_name == "edge_alignment"
    torch.manual_seed(0)
    with torch.no_grad():
        metrics = task.validate(task.build_model().eval(), CPU)
    assert "myo_dice" not in metrics and metrics["labels_available"] == 0.0
    assert {"mi", "mi_identity", "edge_alignment", "edge_alignment_identity"} <= set(metrics)
    assert metrics["edge_alignment"] == pytest.approx(metrics["edge_alignment_identity"], abs=1e-6)
    assert "does not beat no registration" in task.baseline_warning(metrics)
