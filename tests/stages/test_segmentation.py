"""Segmentation stage: loads frozen upstream models, shapes, keys, learning, determinism, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mi_pipeline.config import load_config, stage_hash
from mi_pipeline.data.cache import load_split, load_subject, save_subject
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.errors import CheckpointError, InputError
from mi_pipeline.stages.registry import make_task, motion, registration
from mi_pipeline.stages.seg_confidence import reference_ranges, shape_figures
from mi_pipeline.stages.segmentation import RV_CLASS, SegmentationTask, build_model, split_rv, to_classes

CPU = torch.device("cpu")


def _save_upstream(run_dir: Path, cfg, stage: str, seed: int) -> Path:
    torch.manual_seed(seed)
    model = {"motion": motion, "registration": registration}[stage].build_model(cfg)
    for p in model.parameters():  # move away from the identity so the fields are not all zero
        p.data.add_(0.01 * torch.randn_like(p))
    path = run_dir / "checkpoints" / stage / "best_model.pth"
    ckpt.save_checkpoint(path, {"model": model.state_dict(), "stage": stage, "epoch": 1, "config_hash": "x"})
    return path


@pytest.fixture
def upstream_run(tiny_cfg, synthetic_run) -> Path:
    _save_upstream(synthetic_run, tiny_cfg, "motion", 1)
    _save_upstream(synthetic_run, tiny_cfg, "registration", 2)
    return synthetic_run


def _task(cfg, run_dir) -> SegmentationTask:
    task = make_task("segmentation", cfg, run_dir)
    assert isinstance(task, SegmentationTask)
    task.setup(CPU)
    return task


def test_setup_batch_loss_validate(tiny_cfg, upstream_run):
    task = _task(tiny_cfg, upstream_run)
    assert task.num_train_samples() == 4 * 2
    batch = task.make_batch([0, 2, 3], torch.Generator().manual_seed(0), CPU)
    assert batch["image"].shape == (3, 3 * 4, 32, 32)  # T frames + 2T motion channels
    assert batch["label"].shape == (3, 1, 32, 32) and set(batch["label"].unique().tolist()) <= {0, 1, 2}
    assert batch["image"][:, 4:].abs().sum() > 0  # motion features are there
    torch.manual_seed(0)
    model = task.build_model()
    loss, _ = task.loss(model, batch)
    assert torch.isfinite(loss)
    with torch.no_grad():
        metrics = task.validate(model.eval(), CPU)
    assert {"infarct_dice", "myo_dice", "infarct_fp_percent", "infarct_size_error", "labels_available"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("infarct_dice", "myo_dice"))
    fingerprints = task.upstream()
    assert fingerprints == {s: ckpt.file_fingerprint(upstream_run / "checkpoints" / s / "best_model.pth")
                            for s in ("motion", "registration")}
    log = (upstream_run / "logs" / "segmentation" / "train.log").read_text()  # the QA's minute is not silent
    assert "[segmentation] registration QA (train) 4/4 subject(s)" in log
    assert "[segmentation] registration QA (val) 2/2 subject(s)" in log


def test_targets_are_registered_lge_labels(tiny_cfg, synthetic_run, tiny_overrides, write_cache):
    # an identity registration model: targets are the LGE labels as they are, mapped to classes
    torch.manual_seed(0)
    model = registration.build_model(tiny_cfg)
    ckpt.save_checkpoint(synthetic_run / "checkpoints" / "registration" / "best_model.pth",
                         {"model": model.state_dict(), "stage": "registration", "epoch": 1, "config_hash": "x"})
    cfg = load_config(None, tiny_overrides + ["segmentation.motion_features=false"])
    write_cache(synthetic_run, shift=0.0)  # cine and LGE aligned: the QA keeps identity
    task = _task(cfg, synthetic_run)
    lge_label = torch.cat([torch.from_numpy(s.lge_label) for s in load_split(synthetic_run, "train")])
    assert torch.equal(task.train_y.long(), to_classes(lge_label))
    assert task.train_x.shape[1] == 4
    assert set(task.upstream()) == {"registration"}


def test_a_few_steps_reduce_the_loss(tiny_cfg, upstream_run):
    task = _task(tiny_cfg, upstream_run)
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(task.param_groups(model, 3e-3))
    batch = task.make_batch(list(range(8)), torch.Generator().manual_seed(0), CPU)
    first = task.loss(model, batch)[0].item()
    for _ in range(10):
        loss, _ = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert task.loss(model, batch)[0].item() < first - 1e-3


def test_determinism_and_flip_augmentation(tiny_cfg, upstream_run):
    task = _task(tiny_cfg, upstream_run)
    a = task.make_batch([0, 1, 2, 3], torch.Generator().manual_seed(4), CPU)
    b = task.make_batch([0, 1, 2, 3], torch.Generator().manual_seed(4), CPU)
    assert all(torch.equal(a[k], b[k]) for k in a)
    flips = (torch.rand(4, 2, generator=torch.Generator().manual_seed(4)) < 0.5).tolist()
    for i, (fh, fw) in enumerate(flips):
        dims = [d for d, f in ((-2, fh), (-1, fw)) if f]
        expected = task.train_y[i].long().flip(dims) if dims else task.train_y[i].long()
        assert torch.equal(a["label"][i, 0], expected)
    torch.manual_seed(9)
    m1 = build_model(tiny_cfg)
    torch.manual_seed(9)
    m2 = build_model(tiny_cfg)
    assert all(torch.equal(x, y) for x, y in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_gamma_augmentation_changes_the_cine_channels_only(tiny_cfg, upstream_run):
    """``augment_gamma`` draws after the flips (batches without it are unchanged), keeps the labels and the
    motion channels, and keeps the cine channels in [0, 1]."""
    from dataclasses import replace

    plain = _task(tiny_cfg, upstream_run)
    gamma_cfg = replace(tiny_cfg, segmentation=replace(tiny_cfg.segmentation, augment_gamma=1.5))
    task = _task(gamma_cfg, upstream_run)
    a = plain.make_batch([0, 1, 2, 3], torch.Generator().manual_seed(4), CPU)
    b = task.make_batch([0, 1, 2, 3], torch.Generator().manual_seed(4), CPU)
    frames = tiny_cfg.data.frames
    assert torch.equal(a["label"], b["label"])
    assert torch.equal(a["image"][:, frames:], b["image"][:, frames:])
    assert not torch.equal(a["image"][:, :frames], b["image"][:, :frames])
    assert float(b["image"][:, :frames].min()) >= 0.0 and float(b["image"][:, :frames].max()) <= 1.0


def test_scale_augmentation_zooms_images_fields_and_labels_together(tiny_cfg, upstream_run):
    """``augment_scale`` draws after the flips; a zoomed sample's labelled wall grows or shrinks with the
    square of its factor, its motion fields' magnitude with the factor, and within [1/s, s]."""
    from dataclasses import replace

    plain = _task(tiny_cfg, upstream_run)
    zoomed = _task(replace(tiny_cfg, segmentation=replace(tiny_cfg.segmentation, augment_scale=1.4)), upstream_run)
    rows = list(range(8))
    a = plain.make_batch(rows, torch.Generator().manual_seed(4), CPU)
    b = zoomed.make_batch(rows, torch.Generator().manual_seed(4), CPU)
    generator = torch.Generator().manual_seed(4)
    torch.rand(len(rows), 2, generator=generator)  # the flips
    factor = torch.exp((2 * torch.rand(len(rows), generator=generator) - 1) * float(np.log(1.4)))
    assert factor.min() < 0.95 and factor.max() > 1.05 and bool((factor >= 1 / 1.4).all() and (factor <= 1.4).all())
    frames = tiny_cfg.data.frames
    for i, z in enumerate(factor.tolist()):
        wall_a, wall_b = int((a["label"][i] > 0).sum()), int((b["label"][i] > 0).sum())
        assert wall_b == pytest.approx(wall_a * z * z, rel=0.15), (z, wall_a, wall_b)
        middle = slice(12, 20)  # away from the border, where a shrunk sample is zero-padded
        motion_a = a["image"][i, frames:, middle, middle].abs().mean()
        motion_b = b["image"][i, frames:, middle, middle].abs().mean()
        assert float(motion_b) == pytest.approx(float(motion_a) * z, rel=0.25)
    assert set(b["label"].unique().tolist()) <= {0, 1, 2}


def test_missing_or_mismatched_upstream_is_a_checkpoint_error(tiny_cfg, synthetic_run, tiny_overrides):
    with pytest.raises(CheckpointError, match="missing"):
        _task(tiny_cfg, synthetic_run)
    _save_upstream(synthetic_run, tiny_cfg, "registration", 2)
    bigger = load_config(None, tiny_overrides + ["motion.channels=[16,16]"])
    _save_upstream(synthetic_run, bigger, "motion", 1)  # trained under another config
    with pytest.raises(CheckpointError, match="does not fit"):
        _task(tiny_cfg, synthetic_run)
    path = _save_upstream(synthetic_run, tiny_cfg, "registration", 2)
    path.write_bytes(path.read_bytes()[:100])  # truncated file
    with pytest.raises(CheckpointError):
        _task(tiny_cfg, synthetic_run)


@pytest.fixture
def cine_only_run(tmp_path, tiny_overrides, write_cache):
    """A cine-only cache (no LGE; expert cine labels, no infarct label among them counts) prepared under
    the config, with a motion model and no registration model at all."""
    cfg = load_config(None, tiny_overrides + ["segmentation.epochs=3"])
    write_cache(tmp_path, lge=False, data_hash=stage_hash(cfg, "data"))
    _save_upstream(tmp_path, cfg, "motion", 1)
    return cfg, tmp_path


def test_without_lge_the_targets_are_the_cine_ed_labels_and_myo_dice_picks_the_best(cine_only_run):
    cfg, run = cine_only_run
    task = _task(cfg, run)
    assert task.myocardium_only and task.metric_name == "myo_dice"
    ed = torch.cat([torch.from_numpy(s.cine_label[:, 0]) for s in load_split(run, "train")])
    assert torch.equal(task.train_y.long(), to_classes(ed))
    assert set(task.upstream()) == {"motion"}  # no registration model read, none needed
    assert "cine ED labels" in task.notes()[0] and "myocardium only" in task.notes()[0]
    with torch.no_grad():
        metrics = task.validate(build_model(cfg).eval(), CPU)
    assert "myo_dice" in metrics and not any(k.startswith("infarct_dice") for k in metrics)
    assert task.baseline_warning(metrics) is None
    assert not (run / "logs" / "segmentation" / "registration_qa.json").exists()


def test_target_shapes_are_measured_at_each_subjects_own_crop_spacing(cine_only_run):
    """Crops are sized per heart, so a big heart's targets have coarser pixels. predict's plausibility
    ranges come from these shapes: measured at one nominal spacing they shrank big hearts' areas up to
    4x, and well-segmented real held-out ACDC hearts fell outside them."""
    cfg, run = cine_only_run
    big = load_subject(run, "tr0")
    save_subject(run, dataclasses.replace(big, spacing=(3.2, 3.2, 8.0)))  # as if its crop were widened 2x
    task = _task(cfg, run)
    lo, hi = task.target_shape["ranges"]["area_mm2"]
    rows = shape_figures(to_classes(torch.from_numpy(big.cine_label[:, 0])).numpy(), 3.2)
    assert rows and all(lo <= r["area_mm2"] <= hi for r in rows), (rows, lo, hi)
    assert json.loads((run / "logs" / "segmentation" / "target_shape.json").read_text()) == json.loads(
        json.dumps(task.target_shape))


def test_without_lge_training_writes_a_myocardium_only_checkpoint(cine_only_run, tiny_overrides):
    """``train --stage segmentation`` on the cine-only cache: no registration model anywhere, and the best
    model's file says what it learnt (what ``clinical.trust`` reads), as does the record."""
    from mi_pipeline.layout import RunLayout
    from mi_pipeline.orchestration.progress import ProgressFile
    from tests.helpers import run_module

    cfg, run = cine_only_run
    sets = [arg for item in tiny_overrides + ["segmentation.epochs=3"] for arg in ("--set", item)]
    result = run_module("mi_pipeline.train", "--stage", "segmentation", "--run-dir", str(run), *sets)
    assert result.returncode == 0, result.stdout + result.stderr
    best = ckpt.read_metadata(run / "checkpoints" / "segmentation" / "best_model.pth")
    assert best["facts"] == {"myocardium_only": True, "targets": "cine ED labels", "rv_subjects": 0}
    assert best["metric_name"] == "myo_dice" and 0.0 <= best["metric"] <= 1.0
    assert set(best["upstream"]) == {"motion"}
    record = ProgressFile.for_run(RunLayout(run)).read().stages["segmentation"]
    assert record.status == "done" and record.metric_name == "myo_dice"
    # evaluate scores what it learnt: the myocardium, and says the infarct is not estimated (no infarct rows,
    # which would compare "no infarct" with the truth and read as a bad infarct result)
    shown = run_module("mi_pipeline.evaluate", "--run-dir", str(run), "--split", "val", "--stage", "segmentation")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "infarct not estimated: myocardium-only model" in shown.stdout, shown.stdout
    assert "myocardium Dice" in shown.stdout and "infarct Dice" not in shown.stdout, shown.stdout


def test_without_lge_or_cine_labels_segmentation_refuses_in_one_line(tmp_path, tiny_overrides, write_cache):
    cfg = load_config(None, tiny_overrides)
    write_cache(tmp_path, lge=False, labels=False, data_hash=stage_hash(cfg, "data"))
    _save_upstream(tmp_path, cfg, "motion", 1)
    with pytest.raises(InputError, match="needs cine labels, but cached subject tr0 has none"):
        _task(cfg, tmp_path)


def test_a_myocardium_only_model_never_calls_a_pixel_infarct_and_keeps_its_probability_as_myocardium():
    """Its infarct class never saw a label: what it scores goes to the myocardium, none of it to infarct."""
    from mi_pipeline.stages.segmentation import MyocardiumOnly

    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logits = torch.nn.Parameter(torch.randn(4, 3, 8, 8) * 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits

    raw = Fixed()
    with torch.no_grad():
        before, after = torch.softmax(raw(None), 1), torch.softmax(MyocardiumOnly(raw)(None), 1)
    assert (before.argmax(1) == 2).any()  # the untrained class wins somewhere: the case that matters
    assert not (after.argmax(1) == 2).any() and torch.all(after[:, 2] == 0)
    torch.testing.assert_close(after[:, 1], before[:, 1] + before[:, 2])
    torch.testing.assert_close(after[:, 0], before[:, 0])


@pytest.fixture
def rv_run(tmp_path, tiny_overrides, write_cache):
    """A cine-only cache whose cine labels mark the RV (code 5), as ACDC's do, on every subject but tr3."""
    cfg = load_config(None, tiny_overrides + ["segmentation.epochs=2", "segmentation.learn_rv=true"])
    write_cache(tmp_path, lge=False, rv=True, data_hash=stage_hash(cfg, "data"))
    plain = load_subject(tmp_path, "tr3")
    assert plain.cine_label is not None
    save_subject(tmp_path, dataclasses.replace(plain, cine_label=np.where(plain.cine_label == 5, 0, plain.cine_label)))
    _save_upstream(tmp_path, cfg, "motion", 1)
    return cfg, tmp_path


class _Answers(torch.nn.Module):
    """A 'model' that answers given classes (N, H, W) as confident logits, whatever it is shown."""

    def __init__(self, classes: torch.Tensor, channels: int) -> None:
        super().__init__()
        self.logits = 10.0 * torch.nn.functional.one_hot(classes.long(), channels).permute(0, 3, 1, 2).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def test_learn_rv_teaches_a_fourth_class_from_the_labels_that_mark_the_rv(rv_run):
    cfg, run = rv_run
    task = _task(cfg, run)
    assert task.build_model()(torch.zeros(1, 3 * 4, 32, 32)).shape[1] == 4
    assert (task.train_y == RV_CLASS).any() and task.rv_subjects == 3  # tr3's labels do not mark it
    assert any("RV labels of 3 of 4" in note for note in task.notes()), task.notes()
    truth = task.val_truth
    with torch.no_grad():
        exact = task.validate(_Answers(truth, 4), CPU)
        rv_as_wall = task.validate(_Answers(torch.where(truth == RV_CLASS, 1, truth), 4), CPU)
    assert exact["myo_dice"] == pytest.approx(1.0) and exact["rv_dice"] == pytest.approx(1.0)
    # the RV is not myocardium: a model that calls it wall loses myocardium Dice (and all its RV)
    assert rv_as_wall["myo_dice"] < 0.9 and rv_as_wall["rv_dice"] == pytest.approx(0.0)
    # predict's shape ranges are read from the wall alone, the RV left out
    shapes = shape_figures(torch.where(task.train_y == RV_CLASS, 0, task.train_y).numpy(), 1.6)
    assert task.target_shape["ranges"] == reference_ranges(shapes)


def test_without_learn_rv_the_rv_stays_background(rv_run, tiny_overrides):
    _, run = rv_run
    cfg = load_config(None, tiny_overrides + ["segmentation.epochs=2"])
    task = _task(cfg, run)
    assert int(task.train_y.max()) <= 2 and task.rv_subjects == 0 and "rv_dice" not in task.validate(
        build_model(cfg).eval(), CPU)
    assert build_model(cfg)(torch.zeros(1, 3 * 4, 32, 32)).shape[1] == 3 and not any("learn_rv" in n for n in task.notes())


def test_a_trained_rv_model_says_how_many_subjects_taught_it_the_rv(rv_run, tiny_overrides):
    from tests.helpers import run_module

    _, run = rv_run
    sets = [arg for item in tiny_overrides + ["segmentation.epochs=2", "segmentation.learn_rv=true"]
            for arg in ("--set", item)]
    result = run_module("mi_pipeline.train", "--stage", "segmentation", "--run-dir", str(run), *sets)
    assert result.returncode == 0, result.stdout + result.stderr
    best = ckpt.read_metadata(run / "checkpoints" / "segmentation" / "best_model.pth")
    assert best["facts"]["rv_subjects"] == 3
    assert "rv_dice" in (run / "logs" / "segmentation" / "train.log").read_text()


def test_split_rv_gives_the_rv_to_background_in_every_output_and_says_where_it_wins():
    probs = torch.softmax(torch.randn(2, 4, 6, 6) * 3, dim=1)
    merged, rv = split_rv(probs)
    assert rv is not None and torch.equal(rv, probs.argmax(1) == RV_CLASS) and rv.any()
    torch.testing.assert_close(merged[:, 0], probs[:, 0] + probs[:, RV_CLASS])
    torch.testing.assert_close(merged[:, 1:], probs[:, 1:3])
    torch.testing.assert_close(merged.sum(1), torch.ones(2, 6, 6))
    three = torch.softmax(torch.randn(2, 3, 6, 6), dim=1)
    assert split_rv(three)[0] is three and split_rv(three)[1] is None


def test_with_lge_targets_the_rv_comes_from_the_cine_labels_and_nothing_else_changes(tmp_path, tiny_overrides,
                                                                                      write_cache):
    """LGE labels never mark the RV; a subject whose cine labels do (cine contours beside LGE scar labels)
    teaches it beside its registered targets, which are otherwise what they were."""
    write_cache(tmp_path, rv=True)
    plain = load_config(None, tiny_overrides)
    _save_upstream(tmp_path, plain, "motion", 1)
    _save_upstream(tmp_path, plain, "registration", 2)
    without = _task(plain, tmp_path)
    with_rv = _task(load_config(None, tiny_overrides + ["segmentation.learn_rv=true"]), tmp_path)
    assert not without.myocardium_only and (with_rv.train_y == RV_CLASS).any() and with_rv.rv_subjects == 4
    assert torch.equal(torch.where(with_rv.train_y == RV_CLASS, 0, with_rv.train_y), without.train_y)
    ed = torch.cat([torch.from_numpy(s.cine_label[:, 0]) for s in load_split(tmp_path, "train")])
    assert torch.equal(with_rv.train_y == RV_CLASS, (ed == 5) & (without.train_y == 0))
