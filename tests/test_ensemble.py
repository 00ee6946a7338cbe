"""k-fold ensembles (issue 15): mean probabilities, fold disagreement, the interval, predict on a k-fold run.

Models are untrained (random weights, a different seed per fold, in the real checkpoint format):
the plumbing and the arithmetic are checked here; benchmarks/cv_ensemble.py measures quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest

from mi_pipeline import ensemble, inference
from mi_pipeline.cli import predict
from mi_pipeline.cli.common import run_main
from mi_pipeline.clinical.io import report_schema
from mi_pipeline.config import PhantomConfig, load_config
from mi_pipeline.data.phantom import generate_subject, write_subject
from mi_pipeline.data.preprocess import preprocess_subject
from mi_pipeline.stages.registry import inference_stages
from tests.test_inference import TINY, save_untrained

K = 3


def write_split_file(run: Path, k: int) -> None:
    """The run's ``data/splits/folds.json`` with ``k`` folds: what says which folds a run has."""
    from mi_pipeline.data.folds import folds_path

    subjects = [f"s{i}" for i in range(k)]
    path = folds_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "k": k, "split_seed": 0, "subjects": subjects, "test": [],
                                "folds": [{"train": [s for s in subjects if s != v], "val": [v]} for v in subjects]}))


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("ensemble")
    cfg = load_config(TINY)
    for k in range(K):
        save_untrained(cfg, tmp / "run" / "folds" / str(k) / "checkpoints", seed=k)
    write_split_file(tmp / "run", K)
    write_subject(generate_subject(PhantomConfig(subjects=1, seed=77, size=64, slices=3, frames=8), 0),
                  tmp / "data" / "s0")
    return tmp, cfg


def test_agree_averages_probabilities_and_measures_disagreement() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 2, 3, 5, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    agreement = ensemble.agree(probs.astype(np.float32))
    np.testing.assert_allclose(agreement.mean, probs.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(agreement.uncertainty, probs[:, :, 2].std(axis=0), rtol=1e-5)
    assert np.array_equal(agreement.label, probs.mean(axis=0).argmax(axis=1))
    summary = agreement.summary()
    assert summary["infarct_percent_interval"] == [min(summary["infarct_percent_per_fold"]),
                                                  max(summary["infarct_percent_per_fold"])]
    same = ensemble.agree(np.repeat(probs[:1], 3, axis=0).astype(np.float32))
    assert float(same.uncertainty.max()) < 1e-6 and same.summary()["infarct_percent_sd"] == 0.0
    with pytest.raises(ValueError):
        ensemble.agree(probs[:1].astype(np.float32))  # one fold is not an ensemble


def test_predict_on_a_kfold_run_ensembles_the_folds(kfold_run) -> None:
    tmp, cfg = kfold_run
    cine, out = tmp / "data" / "s0" / "cine.nii.gz", tmp / "out"
    assert run_main(predict.main, ["--cine", str(cine), "--out", str(out), "--run-dir", str(tmp / "run")]) == 0
    report = json.loads((out / "s0" / "report.json").read_text())
    jsonschema.validate(report, report_schema())
    ens = report["ensemble"]
    assert ens["folds"] == K and len(ens["checkpoints"]) == K
    assert [c["segmentation"]["path"] for c in ens["checkpoints"]] == [
        str(tmp / "run" / "folds" / str(k) / "checkpoints" / "segmentation" / "best_model.pth") for k in range(K)]
    lo, hi = ens["infarct_percent_interval"]
    assert lo == min(ens["infarct_percent_per_fold"]) and hi == max(ens["infarct_percent_per_fold"])
    assert lo < hi, "folds with different weights must disagree somewhere"
    # the segmentation is the argmax of the mean fold probability, recomputed here from the parts
    models = inference.load_ensemble(cfg, inference.fold_checkpoints(tmp / "run"), inference_stages(cfg),
                                     inference.inference_device(cfg))
    subject = preprocess_subject(inference.read_cine(cine, "s0", ed=report["frames"]["ed"]), cfg.data)
    probs = inference.fold_probabilities(models, subject)
    assert probs.shape[0] == K
    assert np.array_equal(inference.segment_subject(models, subject)[0], probs.mean(axis=0).argmax(axis=1))
    unc = nib.load(str(out / "s0" / ensemble.UNCERTAINTY_FILE))
    src = nib.load(str(cine))
    assert unc.shape == src.shape[:3] and report["outputs"]["uncertainty_nifti"] == ensemble.UNCERTAINTY_FILE
    np.testing.assert_allclose(unc.affine, src.affine, atol=1e-5)
    values = np.asarray(unc.dataobj)
    assert values.min() >= 0 and 0 < values.max() <= 0.5


def test_predict_one_fold_alone_has_no_ensemble(kfold_run) -> None:
    tmp, _ = kfold_run
    out = tmp / "one"
    assert run_main(predict.main, ["--cine", str(tmp / "data" / "s0" / "cine.nii.gz"), "--out", str(out),
                                   "--run-dir", str(tmp / "run"), "--fold", "1"]) == 0
    report = json.loads((out / "s0" / "report.json").read_text())
    assert "ensemble" not in report and "/folds/1/" in report["checkpoints"]["segmentation"]["path"]
    assert not (out / "s0" / ensemble.UNCERTAINTY_FILE).exists()


def test_cohort_predict_on_a_kfold_run_uses_the_ensemble_too(kfold_run) -> None:
    tmp, _ = kfold_run
    out = tmp / "cohort"
    alone = tmp / "alone"
    assert run_main(predict.main, ["--cohort", "--cine", str(tmp / "data"), "--out", str(out),
                                   "--run-dir", str(tmp / "run")]) == 0
    assert run_main(predict.main, ["--cine", str(tmp / "data" / "s0" / "cine.nii.gz"), "--out", str(alone),
                                   "--run-dir", str(tmp / "run")]) == 0
    report = json.loads((out / "s0" / "report.json").read_text())
    assert report["ensemble"]["folds"] == K and (out / "s0" / ensemble.UNCERTAINTY_FILE).is_file()
    same = json.loads((alone / "s0" / "report.json").read_text())
    assert report["infarct_percent"] == same["infarct_percent"], "cohort and single predict, same ensemble"


@pytest.mark.parametrize("case", ["fold out of range", "a fold not trained"])
def test_predict_kfold_errors_are_one_line(kfold_run, tmp_path, case, capsys) -> None:
    tmp, cfg = kfold_run
    run = tmp / "run"
    args = ["--cine", str(tmp / "data" / "s0" / "cine.nii.gz"), "--out", str(tmp_path / "o")]
    if case == "fold out of range":
        args += ["--run-dir", str(run), "--fold", str(K)]
        expected = f"--fold {K}: out of range"
    else:
        partial = tmp_path / "partial"
        for k in range(2):
            save_untrained(cfg, partial / "folds" / str(k) / "checkpoints", seed=k,
                           stages=("motion", "registration", "segmentation") if k == 0 else ("motion",))
        write_split_file(partial, 2)
        args += ["--run-dir", str(partial)]
        expected = "fold(s) 1 are not trained"
    assert run_main(predict.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err


def test_evaluate_on_a_kfold_run_scores_held_out_folds_pooled_and_the_ensemble(tmp_path: Path, capsys) -> None:
    from mi_pipeline.cli import evaluate
    from mi_pipeline.data import cache
    from mi_pipeline.data.prepare import prepare_data
    from mi_pipeline.layout import RunLayout
    from mi_pipeline.orchestration.fold_setup import prepare_folds

    cfg = load_config(TINY, ["cv.folds=2"])
    prepare_data(cfg, tmp_path, log=lambda m: None)  # the real step 1 on the tiny phantom (5 subjects)
    folds = prepare_folds(cfg, RunLayout(tmp_path))
    for k, fold in enumerate(folds):
        save_untrained(cfg, fold.root / "checkpoints", seed=k)
    assert run_main(evaluate.main, ["--run-dir", str(tmp_path), "--config", str(TINY), "--set", "cv.folds=2",
                                    "--stage", "segmentation", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "evaluate: segmentation 2/2 subject(s)" in captured.err  # progress: a fold's held-out subjects
    assert "evaluate: segmentation (2-fold ensemble) 1/1 subject(s)" in captured.err
    cv = result["cross_validation"]
    for k, fold in enumerate(folds):  # every fold on its own held-out subjects, and only those
        assert cv["folds"][str(k)]["subjects"] == cache.read_split(fold.root, "val")
    pooled = cv["pooled"]
    assert sorted(pooled["subjects"]) == sorted(s for f in cv["folds"].values() for s in f["subjects"])
    errors = [e for f in cv["folds"].values() for e in f["segmentation"]["per_subject"]["infarct_size_error"]]
    assert pooled["segmentation"]["n_subjects"] == len(errors) == 4
    assert pooled["segmentation"]["infarct_size_mae"] == pytest.approx(float(np.mean(errors)))
    ens = result["ensemble"]
    assert ens["subjects"] == cache.read_split(tmp_path, "test"), "the ensemble is scored on the test split"
    rows = ens["segmentation"]["per_subject"]
    assert len(rows["ensemble_uncertainty"]) == len(ens["subjects"]) and rows["ensemble_uncertainty"][0] > 0
    assert ens["segmentation"]["uncertainty_error_spearman"] is None, "one test subject: no rank correlation"
    assert ens["segmentation"]["uncertainty_error_spearman_note"] == "n = 1 < 3 subjects: no rank correlation"
    assert run_main(evaluate.main, ["--run-dir", str(tmp_path), "--config", str(TINY), "--set", "cv.folds=2",
                                    "--stage", "segmentation"]) == 0
    table = capsys.readouterr().out
    for part in ("--- fold 0 (held-out val) ---", "--- fold 1 (held-out val) ---", "--- pooled over folds ---",
                 "--- ensemble of the folds ---",
                 "fold disagreement vs infarct size error, Spearman rho: n = 1 < 3 subjects: no rank correlation"):
        assert part in table, table


def test_folds_come_from_the_split_file_not_from_folders(kfold_run, tmp_path, capsys) -> None:
    """A copied folds/<K> is not averaged in (a warning names it) and status counts K folds; a deleted
    fold is one error line naming it, and status shows it missing."""
    import shutil

    from mi_pipeline.cli import status

    tmp, _ = kfold_run
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    shutil.copytree(run / "folds" / "0", run / "folds" / str(K))  # a stray copy, not in folds.json
    cine = str(tmp / "data" / "s0" / "cine.nii.gz")
    assert run_main(predict.main, ["--cine", cine, "--out", str(tmp_path / "o"), "--run-dir", str(run)]) == 0
    assert json.loads((tmp_path / "o" / "s0" / "report.json").read_text())["ensemble"]["folds"] == K
    assert f"warning: {run / 'folds' / str(K)}: not one of the {K} folds" in capsys.readouterr().err
    assert run_main(status.main, ["--run-dir", str(run)]) == 0
    shown = capsys.readouterr().out
    assert f"folds: {K}\n" in shown and f"{run / 'folds' / str(K)}: not one of the {K} folds" in shown

    shutil.rmtree(run / "folds" / "1")
    assert run_main(predict.main, ["--cine", cine, "--out", str(tmp_path / "o2"), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {run / 'folds' / '1'}: missing") and "Traceback" not in "".join(err)
    assert run_main(status.main, ["--run-dir", str(run)]) == 0
    shown = capsys.readouterr().out
    assert f"folds: {K}\n" in shown and "\n  1     missing" in shown
