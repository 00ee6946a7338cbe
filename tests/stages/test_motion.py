"""Motion stage: shapes, keys, learning, determinism, the no-label fallback, cine-label supervision."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mi_pipeline.stages.motion import MotionTask, build_model, motion_fields
from mi_pipeline.stages.registry import make_task

CPU = torch.device("cpu")


def _task(cfg, run_dir) -> MotionTask:
    task = make_task("motion", cfg, run_dir)
    assert isinstance(task, MotionTask)
    task.setup(CPU)
    return task


def test_batch_loss_and_validation_shapes(tiny_cfg, synthetic_run):
    task = _task(tiny_cfg, synthetic_run)
    assert task.num_train_samples() == 4 * 2 * 3  # subjects x slices x (frames - 1)
    batch = task.make_batch([0, 5, 7], torch.Generator().manual_seed(0), CPU)
    assert batch["moving"].shape == batch["fixed"].shape == (3, 1, 32, 32)
    torch.manual_seed(0)
    model = task.build_model()
    loss, parts = task.loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and set(parts) == {"similarity", "smoothness", "label_dice"}
    with torch.no_grad():
        metrics = task.validate(model.eval(), CPU)
    assert {"myo_dice", "myo_dice_identity", "folding_percent", "val_loss"} <= set(metrics)
    # the last conv starts at zero: an untrained model is the identity
    assert abs(metrics["myo_dice"] - metrics["myo_dice_identity"]) < 1e-9
    assert metrics["folding_percent"] == 0.0
    fields = motion_fields(model, task.val.rows("cine", range(len(task.val))))
    assert fields.shape == (len(task.val), 4, 2, 32, 32)


def test_a_few_steps_reduce_the_loss(tiny_cfg, synthetic_run):
    task = _task(tiny_cfg, synthetic_run)
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(task.param_groups(model, 3e-3))
    batch = task.make_batch(list(range(12)), torch.Generator().manual_seed(0), CPU)
    first = task.loss(model, batch)[0].item()
    for _ in range(15):
        loss, _ = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert task.loss(model, batch)[0].item() < first - 1e-3


def test_determinism(tiny_cfg, synthetic_run):
    task = _task(tiny_cfg, synthetic_run)
    a = task.make_batch([3, 1], torch.Generator().manual_seed(7), CPU)
    b = task.make_batch([3, 1], torch.Generator().manual_seed(7), CPU)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(3)
    m1 = build_model(tiny_cfg)
    torch.manual_seed(3)
    m2 = build_model(tiny_cfg)
    assert all(torch.equal(x, y) for x, y in zip(m1.state_dict().values(), m2.state_dict().values()))
    torch.manual_seed(0)
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():
        state = torch.get_rng_state()
        assert task.validate(model, CPU) == task.validate(model, CPU)
        assert torch.equal(state, torch.get_rng_state())  # validation draws nothing from the global RNG


def test_without_cine_labels_the_figure_is_named_for_what_it_is(tiny_cfg, tmp_path, write_cache):
    """No cine labels: no 'myo_dice'; LNCC decides best, beside its identity value, and an untrained
    (identity) model gets the loud warning."""
    write_cache(tmp_path, labels=False)
    task = _task(tiny_cfg, tmp_path)
    torch.manual_seed(0)
    with torch.no_grad():
        metrics = task.validate(task.build_model().eval(), CPU)
    assert metrics["labels_available"] == 0.0
    assert "myo_dice" not in metrics and task.metric_name == "lncc"
    assert metrics["lncc"] == pytest.approx(metrics["lncc_identity"], abs=1e-6)
    assert "does not beat the identity" in task.baseline_warning(metrics)
    assert task.baseline_warning({**metrics, "lncc": metrics["lncc_identity"] + 0.1}) is None


def _weighted(cfg, weight: float):
    return replace(cfg, motion=replace(cfg.motion, label_dice_weight=weight))


AT_ES = [1, 4, 7]  # pair i = (slice i // 3, frame i % 3 + 1); the synthetic cache's ES is frame 2
NOT_AT_ES = [0, 2, 3, 5]


def test_cine_labels_supervise_the_ed_to_es_pairs_and_only_those(tiny_cfg, synthetic_run):
    task = _task(tiny_cfg, synthetic_run)
    assert "ED -> ES myocardium Dice of the cine labels" in task.notes()[0]
    torch.manual_seed(0)
    model = task.build_model()  # the identity: the warped ED myocardium is the ED myocardium
    gen = torch.Generator().manual_seed(0)
    _, at_es = task.loss(model, task.make_batch(AT_ES, gen, CPU))
    _, elsewhere = task.loss(model, task.make_batch(NOT_AT_ES, gen, CPU))
    assert float(at_es["label_dice"]) > 0.05  # ED and ES myocardium differ: the identity pays for it
    assert float(elsewhere["label_dice"]) == 0.0  # frames between are the nearest annotated frame's, not truth
    unsupervised = _task(_weighted(tiny_cfg, 0), synthetic_run)
    assert "image similarity alone (motion.label_dice_weight is 0)" in unsupervised.notes()[0]
    batch = unsupervised.make_batch(AT_ES, gen, CPU)
    assert "at_es" not in batch and "label_dice" not in unsupervised.loss(model, batch)[1]


def test_the_label_term_moves_the_warp_towards_the_es_myocardium(tiny_cfg, synthetic_run):
    """A few steps on the ED -> ES pairs with the label term raise the validation myocardium Dice more
    than the same steps on image similarity alone."""
    scores = {}
    for weight in (0, 1):
        task = _task(_weighted(tiny_cfg, weight), synthetic_run)
        torch.manual_seed(0)
        model = task.build_model()
        opt = torch.optim.AdamW(task.param_groups(model, 3e-3))
        batch = task.make_batch(list(range(1, task.num_train_samples(), 3)), torch.Generator().manual_seed(0), CPU)
        for _ in range(20):
            loss, _ = task.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores[weight] = task.validate(model.eval(), CPU)["myo_dice"]
    assert scores[1] > scores[0] + 0.005, scores


def test_without_cine_labels_the_log_says_training_uses_the_images_alone(tiny_cfg, tmp_path, write_cache):
    write_cache(tmp_path, labels=False)
    task = _task(tiny_cfg, tmp_path)
    assert "image similarity alone (not every training subject has cine labels)" in task.notes()[0]
    assert "at_es" not in task.make_batch([1, 4], torch.Generator().manual_seed(0), CPU)


def test_the_folding_penalty_adds_the_mean_negative_jacobian_of_the_field(tiny_cfg, synthetic_run, monkeypatch):
    """``fold_weight`` adds weight x mean(max(0, -det J)) of the field the network predicts (det J by numpy's
    central differences here); a field that folds nowhere adds nothing, and without it no folding part. The
    network is replaced by fixed fields: a few steps on the tiny data never fold (its effect on real hearts is
    measured in docs/QUALITY.md)."""
    import numpy as np

    from mi_pipeline.stages import motion

    rng = np.random.default_rng(0)
    smooth = 0.3 * rng.standard_normal((1, 2, 1, 1)) * np.ones((3, 2, 32, 32))  # a shift: det J = 1 everywhere
    rows = np.arange(32, dtype=np.float64)
    folded = smooth.copy()
    folded[:, 0] += np.where((rows > 10) & (rows < 20), -1.8 * (rows - 10), -1.8 * 9 * (rows >= 20))[None, :, None]

    def det_j(ddf: np.ndarray) -> np.ndarray:
        d0_h, d0_w = np.gradient(ddf[:, 0], axis=(1, 2))
        d1_h, d1_w = np.gradient(ddf[:, 1], axis=(1, 2))
        return (1 + d0_h) * (1 + d1_w) - d0_w * d1_h

    expected = np.maximum(-det_j(folded), 0).mean()
    assert expected > 0.05 and np.maximum(-det_j(smooth), 0).mean() == 0
    losses = {}
    for weight in (0.0, 4.0):
        cfg = replace(tiny_cfg, motion=replace(tiny_cfg.motion, fold_weight=weight))
        task = _task(cfg, synthetic_run)
        batch = task.make_batch([0, 1, 2], torch.Generator().manual_seed(0), CPU)
        for name, field in (("smooth", smooth), ("folded", folded)):
            monkeypatch.setattr(motion, "predict_ddf", lambda model, moving, fixed, f=field: torch.tensor(f).float())
            total, parts = task.loss(None, batch)
            losses[weight, name] = float(total)
            assert ("folding" in parts) == (weight > 0)
    assert losses[4.0, "smooth"] == pytest.approx(losses[0.0, "smooth"], abs=1e-6)
    assert losses[4.0, "folded"] - losses[0.0, "folded"] == pytest.approx(4.0 * expected, rel=1e-4)
