"""predict: files in the cine's own geometry, the report, the QC picture, one-line errors.

Models here are untrained (random weights saved in the real checkpoint format): these tests check
the plumbing, the benchmark (benchmarks/quality.py) checks the quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mi_pipeline import inference
from mi_pipeline.cli import predict
from mi_pipeline.cli.common import run_main
from mi_pipeline.config import PhantomConfig, load_config, stage_hash, to_dict
from mi_pipeline.data.phantom import generate_subject, write_subject
from mi_pipeline.data.preprocess import preprocess_subject, sample
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.stages import registry

TINY = Path(__file__).parent / "configs" / "tiny.yaml"


def save_untrained(cfg, root: Path, stages=("motion", "registration", "segmentation"), seed: int = 0) -> None:
    torch.manual_seed(seed)
    for stage in stages:
        model = registry.stage(stage).build_model(cfg)
        ckpt.save_checkpoint(root / stage / ckpt.BEST, {
            "kind": "best", "stage": stage, "model": model.state_dict(), "epoch": 1, "metric_name": "x",
            "metric": 0.0, "metrics": {}, "config_hash": stage_hash(cfg, stage), "config": to_dict(cfg),
            "upstream": {}})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("predict")
    cfg = load_config(TINY)
    save_untrained(cfg, tmp / "run" / "checkpoints")
    params = PhantomConfig(subjects=2, seed=77, size=64, slices=3, frames=8)
    for i in range(2):
        write_subject(generate_subject(params, i), tmp / "data" / f"s{i}")
    return tmp, cfg


def test_predict_writes_three_files_in_cine_geometry(setup, capsys) -> None:
    tmp, cfg = setup
    cine = tmp / "data" / "s0" / "cine.nii.gz"
    out = tmp / "out"
    assert run_main(predict.main, ["--cine", str(cine), "--out", str(out), "--run-dir", str(tmp / "run")]) == 0
    folder = out / "s0"
    seg = nib.load(str(folder / "infarct_seg.nii.gz"))
    src = nib.load(str(cine))
    assert seg.shape == src.shape[:3]
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    report = json.loads((folder / "report.json").read_text())
    for key in ("infarct_percent", "per_slice", "aha_segments", "frames", "checkpoints", "config_hash"):
        assert key in report
    assert len(report["per_slice"]) == 3 and set(report["aha_segments"]) == {str(s) for s in range(1, 17)}
    assert set(report["checkpoints"]) == {"motion", "segmentation"}
    import yaml

    assert report["frames"]["ed"] == yaml.safe_load((cine.parent / "info.yaml").read_text())["ed"]  # found from images
    for name in ("qc.png", "bullseye.png"):  # matplotlib figures (texts checked in test_figures.py)
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["schema_version"] == 1 and report["aha_anchor"]["method"] in ("rv_images", "fixed")
    crop = report["localisation"]
    assert report["spacing_mm"][0] * cfg.data.crop == pytest.approx(crop["crop_mm"], abs=0.1)
    assert crop["crop_grown"] in (0, 1, 2)
    if report["aha_anchor"]["method"] == "fixed":  # untrained model: no usable myocardium, so the fallback, said aloud
        assert any("fixed angle" in w for w in report["warnings"])
        assert "warning: s0:" in capsys.readouterr().err


def test_predict_folder_and_stored_config(setup) -> None:
    tmp, _ = setup
    out = tmp / "out_folder"
    assert run_main(predict.main, ["--cine", str(tmp / "data"), "--out", str(out),
                                   "--checkpoints", str(tmp / "run" / "checkpoints")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["s0", "s1"]


def test_crop_grid_maps_back_exactly(setup) -> None:
    """Crop-grid labels mapped back with to_cine_grid land on the same voxels (the geometry round trip),
    on a crop that holds the heart at the cine's own spacing (the tiny config's 32 px would be coarser)."""
    tmp, cfg = setup
    from dataclasses import replace

    from mi_pipeline.data.generic import load_subject

    raw = load_subject(tmp / "data", "s0")
    subject = preprocess_subject(raw, replace(cfg.data, crop=64))
    assert subject.spacing[0] == pytest.approx(cfg.data.spacing_mm)
    crop_ed = subject.cine_label[:, 0]
    back = inference.to_cine_grid(crop_ed, subject.affine, raw.cine_affine, raw.cine.shape[:3])
    truth = np.where(raw.cine_label[..., raw.ed] == 4, 3, raw.cine_label[..., raw.ed])
    covered = back > 0
    assert covered.sum() > 0.9 * (truth > 0).sum()
    assert (back[covered] == truth[covered]).mean() > 0.99


def test_the_label_is_the_argmax_of_the_flip_averaged_softmax(setup) -> None:
    """Evaluate and predict label every subject through one path: the softmax averaged over the input
    as it is and flipped (``seg_confidence.tta_probabilities``), whose passes predict's uncertainty reports."""
    tmp, cfg = setup
    from mi_pipeline.data.generic import load_subject
    from mi_pipeline.stages import motion, seg_confidence, segmentation

    models = inference.load_models(cfg, tmp / "run" / "checkpoints", registry.inference_stages(cfg),
                                   torch.device("cpu"))
    subject = preprocess_subject(load_subject(tmp / "data", "s0"), cfg.data)
    cine = torch.from_numpy(np.ascontiguousarray(subject.cine))
    x = segmentation.segmentation_inputs(cine, motion.motion_fields(models.motion, cine))
    probs = seg_confidence.tta_probabilities(models.segmentation, x, cine.shape[1])
    np.testing.assert_array_equal(inference.segment_probabilities(models, subject)[0], probs.numpy())
    pred = inference.segment_subject(models, subject)[0]
    np.testing.assert_array_equal(pred, probs.argmax(dim=1).numpy())
    np.testing.assert_array_equal(pred, seg_confidence.tta_predict(models.segmentation, x, cine.shape[1])[0])


@pytest.mark.parametrize("case", ["missing", "3d", "empty_folder", "no_checkpoint"])
def test_predict_bad_input_is_one_line_exit_2(setup, case, capsys, tmp_path) -> None:
    tmp, _ = setup
    run = ["--run-dir", str(tmp / "run")]
    if case == "missing":
        argv = ["--cine", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "o"), *run]
    elif case == "3d":
        img = nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 3)).astype(np.float32), np.eye(4))
        nib.save(img, str(tmp_path / "flat.nii.gz"))
        argv = ["--cine", str(tmp_path / "flat.nii.gz"), "--out", str(tmp_path / "o"), *run]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        argv = ["--cine", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *run]
    else:
        argv = ["--cine", str(tmp / "data" / "s0" / "cine.nii.gz"), "--out", str(tmp_path / "o"),
                "--run-dir", str(tmp_path), "--config", str(TINY)]
    assert run_main(predict.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_report_carries_confidence(setup) -> None:
    """Issue 14: no LGE at predict time, so the report says how sure the segmentation is and whether
    its myocardium looks like what training saw (untrained weights here: flagged implausible)."""
    tmp, _ = setup
    out = tmp / "out_confidence"
    assert run_main(predict.main, ["--cine", str(tmp / "data" / "s1" / "cine.nii.gz"), "--out", str(out),
                                   "--run-dir", str(tmp / "run")]) == 0
    confidence = json.loads((out / "s1" / "report.json").read_text())["confidence"]
    assert {"mean_entropy_myocardium", "disagreement_percent_myocardium",
            "infarct_percent_range"} <= set(confidence["uncertainty"])
    verdict = confidence["plausibility"]
    assert verdict["reference"].startswith("physiological defaults") and isinstance(verdict["implausible"], bool)
    assert verdict["implausible"] == bool(verdict["reasons"])


def test_report_trust_follows_the_number_everywhere(setup, capsys, monkeypatch) -> None:
    """A phantom-only model on a cine that is not from the phantom says NOT A MEASUREMENT in report.json,
    on the console and in both figures' titles; --strict exits 3 after writing everything. With the
    phantom's marker beside the cine, the same model's verdict is the plausibility check's."""
    import jsonschema

    from mi_pipeline.clinical import figures, io
    from mi_pipeline.data.phantom import MARKER

    titles: dict[str, str] = {}
    save = figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: (titles.__setitem__(Path(path).name, (
        fig.get_suptitle(), fig._suptitle.get_color())), save(fig, path)))
    tmp, _ = setup
    cine = tmp / "data" / "s0" / "cine.nii.gz"
    out = tmp / "out_trust"
    argv = ["--cine", str(cine), "--out", str(out), "--run-dir", str(tmp / "run")]
    assert run_main(predict.main, argv + ["--strict"]) == predict.STRICT_EXIT
    captured = capsys.readouterr()
    report = json.loads((out / "s0" / "report.json").read_text())
    jsonschema.validate(report, io.report_schema())
    trust = report["trust"]
    assert trust["verdict"] == "not_a_measurement" and not trust["input_from_phantom"]
    assert trust["model"]["phantom_only"] and trust["model"]["data_format"] == "phantom"
    assert trust["line"] in report["warnings"] and len(trust["label"]) <= 64
    assert f"s0: {trust['label']}: infarct" in captured.out and trust["line"] in captured.out
    fixed = report["aha_anchor"]["method"] == "fixed"
    assert ("numbered from a FIXED angle" in captured.out) == fixed, (report["aha_anchor"], captured.out)
    assert "--strict" in captured.err and (out / "s0" / "qc.png").is_file() and (out / "s0" / "bullseye.png").is_file()
    for name in ("qc.png", "bullseye.png"):  # the figures' titles carry the verdict, in red
        title, colour = titles[name]
        assert "NOT A MEASUREMENT" in title and "phantom only" in title.replace("\n", " ") and colour == "#c00000"

    (tmp / "data" / MARKER).write_text("{}")  # the cine now sits in a phantom dataset
    try:
        assert run_main(predict.main, argv) == 0
    finally:
        (tmp / "data" / MARKER).unlink()
    trust = json.loads((out / "s0" / "report.json").read_text())["trust"]
    implausible = trust["implausible"]
    assert trust["input_from_phantom"] and trust["verdict"] == ("implausible" if implausible else "plausible")


def test_provenance_counts_the_run_splits(tmp_path) -> None:
    from mi_pipeline.clinical import trust

    cfg = load_config(TINY)
    save_untrained(cfg, tmp_path / "checkpoints", stages=("segmentation",))
    splits = tmp_path / "data" / "splits"
    splits.mkdir(parents=True)
    for name, n in (("train", 7), ("val", 2), ("test", 3)):
        (splits / f"{name}.txt").write_text("".join(f"s{i}\n" for i in range(n)))
    path = registry.best_path(tmp_path / "checkpoints", "segmentation")
    provenance = trust.model_provenance({"path": str(path), "fingerprint": ckpt.file_fingerprint(path)}, folds=0)
    assert provenance["subjects"] == {"train": 7, "val": 2, "test": 3}
    assert provenance["summary"] == "phantom only (synthetic hearts): trained on 7 subject(s), best epoch chosen on 2"


def test_a_myocardium_only_model_reports_that_the_infarct_is_not_estimated(tmp_path, capsys) -> None:
    """A segmentation model trained without LGE (its best_model.pth's ``facts``) on a real cine: report.json,
    the console line and the cohort row all say the infarct is not estimated, not a number to read."""
    import jsonschema

    from mi_pipeline.clinical import io
    from mi_pipeline.clinical.trust import INFARCT_NOT_ESTIMATED
    from mi_pipeline.cohort import table_row

    cfg = load_config(TINY)
    save_untrained(cfg, tmp_path / "run" / "checkpoints")
    best = tmp_path / "run" / "checkpoints" / "segmentation" / ckpt.BEST
    payload = ckpt.load_checkpoint(best)
    ckpt.save_checkpoint(best, {**payload, "facts": {"myocardium_only": True, "targets": "cine ED labels"}})
    write_subject(generate_subject(PhantomConfig(subjects=1, seed=5, size=64, slices=3, frames=8), 0),
                  tmp_path / "data" / "s0")
    out = tmp_path / "out"
    argv = ["--cine", str(tmp_path / "data" / "s0" / "cine.nii.gz"), "--out", str(out), "--run-dir",
            str(tmp_path / "run")]
    assert run_main(predict.main, argv + ["--strict"]) == predict.STRICT_EXIT
    console = capsys.readouterr().out
    report = json.loads((out / "s0" / "report.json").read_text())
    jsonschema.validate(report, io.report_schema())
    trust = report["trust"]
    assert trust["verdict"] == "not_a_measurement" and trust["model"]["myocardium_only"]
    assert trust["line"].startswith(INFARCT_NOT_ESTIMATED) and trust["line"] in report["warnings"]
    assert f"s0: {trust['label']}: infarct" in console and INFARCT_NOT_ESTIMATED in console
    row = table_row(report)
    assert row["verdict"] == "not_a_measurement" and "infarct_not_estimated" in row["flags"].split(";")
    assert "myocardium only (no LGE" in row["model"]


@pytest.mark.parametrize("base_first", [True, False])
def test_qc_basal_row_is_the_most_basal_slice(base_first: bool) -> None:
    from mi_pipeline import metrics

    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    sizes = [15, 14, 13, 12, 10, 8] if base_first else [8, 10, 12, 13, 14, 15]
    pred = np.stack([((r < s) & (r > s - 4)).astype(np.uint8) for s in sizes])
    levels = metrics.level_of_slices(pred > 0)
    rows = inference._qc_slices(levels, pred)
    assert levels[rows[0]] == "basal" and rows[0] == (0 if base_first else 5)
    assert [levels[k] for k in rows] == ["basal", "mid", "apical"]


@pytest.mark.parametrize("method", ["fixed", "images"])
def test_the_console_line_names_a_fixed_angle_numbering(method: str) -> None:
    """Where the RV insertion was not found, the console says so beside the number, not only report.json."""
    report = {"subject": "s1", "infarct_percent": 12.0, "infarct_ml": 3.0, "frames": {"ed": 0, "es": 9},
              "trust": {"verdict": "plausible", "label": "plausible", "line": "model: x; result: plausible"},
              "aha_anchor": {"method": method, "why": "no RV insertion point found on any slice"}}
    line = predict.console_line(report, Path("/out/s1"))
    assert line.startswith("s1: infarct 12.0% of myocardium")
    assert ("FIXED angle, not the patient's RV insertion: no RV insertion point found" in line) == (method == "fixed")


def _labelled_myocardium(raw):
    """A segmenter that answers with the subject's own labelled ED myocardium on the crop grid: the crop
    check's logic with a perfect segmentation (the real models run through it in the predict tests above)."""
    calls = []

    def segment(subject):
        shape = (subject.cine.shape[-2], subject.cine.shape[-1], subject.cine.shape[0])
        label, _ = sample(raw.cine_label[..., raw.ed], raw.cine_affine, subject.affine, shape, order=0)
        calls.append(subject)
        return inference.Segmented(None, np.isin(label, (2, 3, 4)).transpose(2, 0, 1).astype(np.uint8), None, None, None)
    return segment, calls


def _wall_reach_mm(raw, center) -> float:
    myo = np.isin(raw.cine_label[..., raw.ed], (2, 3, 4)).any(axis=2)
    sp = np.linalg.norm(raw.cine_affine[:3, :2], axis=0)
    ii, jj = np.nonzero(myo)
    return float(np.max(np.hypot((ii - center[0]) * sp[0], (jj - center[1]) * sp[1])))


@pytest.mark.parametrize("short_by", [None, 1.15])
def test_predict_grows_a_crop_the_segmented_myocardium_reaches_the_border_of(setup, short_by) -> None:
    """A crop sized from a pool radius too small for the wall (real hypertrophied hearts) is grown 1.3x
    until the segmented myocardium clears the outer ring; one that holds the heart is kept as it is."""
    tmp, cfg = setup
    from dataclasses import replace

    from mi_pipeline.data.generic import load_subject
    from mi_pipeline.data.localise import LvLocation
    from mi_pipeline.data.preprocess import CROP_MARGIN_MM, on_outer_ring

    raw = load_subject(tmp / "data", "s0")
    found = inference.locate(raw)
    reach = _wall_reach_mm(raw, found.center)
    small = replace(cfg, data=replace(cfg.data, spacing_mm=0.3))  # the configured grid never holds this heart
    radius = reach + 5.0 - CROP_MARGIN_MM if short_by is None else reach / short_by - CROP_MARGIN_MM
    segment, calls = _labelled_myocardium(raw)
    unlabelled = replace(raw, cine_label=None, lge=None, lge_affine=None, lge_label=None)  # as predict reads a cine
    crop = inference.crop_holding_heart(unlabelled, small, LvLocation(found.center, radius, "blood_pool"), segment)
    assert crop.grown == (0 if short_by is None else 1) and len(calls) == crop.grown + 1
    assert not crop.still_cut and not on_outer_ring(crop.result.label > 0)
    if short_by is not None:
        assert on_outer_ring(segment(calls[0]).label > 0)  # the first crop did cut the wall
        assert crop.subject.spacing[0] == pytest.approx(1.3 * calls[0].spacing[0], rel=1e-3)
        assert crop.warnings() == [f"crop grown 1 time(s), to {crop.subject.spacing[0] * small.data.crop:.0f} mm: "
                                   "the segmented myocardium reached the border of the crop sized from the blood pool"]
    else:
        assert crop.warnings() == []


def _disc(n: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return np.hypot(yy, xx) <= radius


@pytest.mark.parametrize("closed_ring", [True, False])
def test_predict_grows_the_crop_at_most_twice_and_only_for_a_segmentation_that_shows_a_heart(setup,
                                                                                             closed_ring) -> None:
    """A wall that still reaches the border after two growths is reported as maybe cut; a segmentation
    without a closed myocardial ring anywhere (no heart: a phantom-trained model on a real cine) grows nothing."""
    tmp, cfg = setup
    from dataclasses import replace

    from mi_pipeline.data.generic import load_subject

    raw = load_subject(tmp / "data", "s0")
    calls = []

    def segment(subject):  # on every crop: a ring wider than the crop (or only an open arc at its edge)
        calls.append(subject)
        n = subject.cine.shape[-1]
        ring = _disc(n, n * 0.6) & ~_disc(n, n * 0.2) if closed_ring else ~_disc(n, n * 0.45) & (np.arange(n) < 8)
        pred = np.broadcast_to(ring, (subject.cine.shape[0], n, n)).astype(np.uint8)
        pred[0, 0, 0] = 2  # a stray piece on one slice is not the wall
        return inference.Segmented(None, pred, None, None, None)

    crop = inference.crop_holding_heart(replace(raw, cine_label=None), cfg, inference.locate(raw), segment)
    if not closed_ring:
        assert crop.grown == 0 and not crop.still_cut and len(calls) == 1 and crop.warnings() == []
        return
    assert crop.still_cut and crop.grown == inference.CROP_GROWTHS == len(calls) - 1
    assert [round(c.spacing[0] / calls[0].spacing[0], 2) for c in calls] == [1.0, 1.3, 1.69]
    assert "still reaches the crop border after the crop grew 2 time(s)" in crop.warnings()[0]


class _BrightIsRv(torch.nn.Module):
    """A 4-class 'model' (``learn_rv``) that calls the RV wherever the first cine frame is bright and
    background elsewhere: flip-equivariant, so its TTA average is its own answer."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # where inference reads the model's device from

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rv = 20.0 * (x[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(rv), torch.full_like(rv, -5.0), torch.full_like(rv, -5.0), rv], dim=1)


@pytest.mark.parametrize("rv_learnt", [True, False])
def test_a_model_that_learnt_the_rv_hands_it_on_and_every_label_keeps_it_background(setup, rv_learnt) -> None:
    tmp, cfg = setup
    from mi_pipeline.data.generic import load_subject

    subject = preprocess_subject(load_subject(tmp / "data", "s0"), cfg.data)
    models = inference.Models(cfg=cfg, segmentation=_BrightIsRv(), rv_learnt=rv_learnt)
    segmented = inference.segment_with_passes(models, subject)
    assert not segmented.label.any()  # the RV is background in the label every output is made from
    assert segmented.passes is not None and all(p.shape[1] == 3 for p in segmented.passes)
    if not rv_learnt:  # a model whose RV class never saw a label: nothing handed on
        assert segmented.rv is None
        return
    bright = subject.cine[:, 0] > 0.5
    assert segmented.rv is not None and bright.any() and np.array_equal(segmented.rv, bright)


def test_an_ensemble_hands_on_the_rv_most_folds_found_and_none_unless_every_fold_learnt_it(setup) -> None:
    tmp, cfg = setup
    from mi_pipeline.data.generic import load_subject

    subject = preprocess_subject(load_subject(tmp / "data", "s0"), cfg.data)

    def folds(*learnt: bool) -> inference.Models:
        members = [inference.Models(cfg=cfg, segmentation=_BrightIsRv(), rv_learnt=r) for r in learnt]
        return inference.Models(cfg=cfg, segmentation=members[0].segmentation, folds=members,
                                rv_learnt=all(learnt))

    both = inference.segment_with_passes(folds(True, True), subject)
    assert both.rv is not None and np.array_equal(both.rv, subject.cine[:, 0] > 0.5) and not both.label.any()
    assert inference.segment_with_passes(folds(True, False), subject).rv is None


def test_predict_numbers_the_segments_from_the_rv_the_model_found(tmp_path, monkeypatch) -> None:
    """The RV a model found reaches the AHA anchor of predict's report (``rv_model``), not the images."""
    import jsonschema

    from mi_pipeline.clinical import aha, io
    from mi_pipeline.data.generic import load_subject

    cfg = load_config(TINY)
    save_untrained(cfg, tmp_path / "run" / "checkpoints")
    params = PhantomConfig(subjects=1, seed=8, size=64, slices=4, frames=8, rv_label=True)
    write_subject(generate_subject(params, 0), tmp_path / "data" / "s0")
    raw = load_subject(tmp_path / "data", "s0")
    assert (raw.cine_label == 5).any()
    seen = {}

    def labelled(models, subject):  # the labels' myocardium and RV, as a model that learnt both would answer
        shape = (subject.cine.shape[-2], subject.cine.shape[-1], subject.cine.shape[0])
        label = sample(raw.cine_label[..., raw.ed], raw.cine_affine, subject.affine, shape, order=0)[0].transpose(2, 0, 1)
        seen["myo"], seen["rv"], seen["subject"] = np.isin(label, (2, 3)), label == 5, subject
        return inference.Segmented(None, np.isin(label, (2, 3)).astype(np.uint8), None, None, label == 5)

    monkeypatch.setattr(inference, "segment_with_passes", labelled)
    models = inference.load_models(cfg, tmp_path / "run" / "checkpoints", registry.inference_stages(cfg),
                                   torch.device("cpu"))
    report = inference.predict_one("s0", tmp_path / "data" / "s0" / "cine.nii.gz", tmp_path / "out", models, cfg)
    jsonschema.validate(report, io.report_schema())
    expected = aha.anchor_from_labels(seen["rv"], seen["myo"], seen["subject"].affine,
                                      float(seen["subject"].spacing[0]))
    assert report["aha_anchor"]["method"] == "rv_model"
    assert report["aha_anchor"]["anterior_insertion_deg"] == expected.to_json()["anterior_insertion_deg"]
