"""The figures a clinician reads: every text a reader relies on is drawn (checked on the Figure, not by eye),
and the PNG is written atomically (no temp file left, a complete PNG at the target)."""

from __future__ import annotations

import numpy as np
import pytest

from mi_pipeline.clinical import figures

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def qc_inputs():
    rng = np.random.default_rng(0)
    z, t, h, w = 5, 4, 32, 32
    cine = rng.random((z, t, h, w)).astype(np.float32)
    fields = rng.normal(size=(z, t, 2, h, w)).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - 15.5, xx - 15.5)
    ring = (r > 7) & (r < 11)
    pred = np.zeros((z, h, w), np.uint8)
    pred[:, ring] = 1
    pred[:, ring & (xx > 20)] = 2
    return cine, fields, pred


def test_qc_figure_texts(qc_inputs, tmp_path) -> None:
    cine, fields, pred = qc_inputs
    fig = figures.qc_figure("patient_007", cine, 2, fields, pred, [0, 2, 4], ["basal", None, "mid", None, "apical"],
                            infarct_percent=23.456, ed_frame=3, es_frame=11, spacing_mm=1.5)
    texts = figures.figure_texts(fig)
    title = fig.get_suptitle()
    assert "patient_007" in title and "infarct 23.5 % of LV myocardium" in title
    assert "ED frame 3" in title and "ES frame 11" in title
    for column in ("cine at ED (frame 3)", "cine at ES (frame 11)", "motion ED \u2192 ES (myocardium)",
                   "segmentation on ED, AHA sectors"):
        assert column in texts
    assert {"myocardium", "infarct"} <= set(texts)  # the legend
    assert any(t.startswith("motion magnitude ED \u2192 ES (mm)") for t in texts)  # colour bar label with units
    assert "basal\nslice 0 (0-based, of 0..4)" in texts and "apical\nslice 4 (0-based, of 0..4)" in texts
    assert sum(t.startswith("infarct ") and t.endswith(" %") for t in texts) == 3  # per-row number
    figures.save_figure(fig, tmp_path / "qc.png")
    assert (tmp_path / "qc.png").read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]  # no temp file left behind


def test_bullseye_texts() -> None:
    extents = {s: float(5 * s) for s in range(1, 17)}
    extents[16] = None
    fig = figures.bullseye_figure("patient_007", extents, anchor="anterior RV insertion point, found in the cine",
                                  infarct_percent=12.34)
    texts = figures.figure_texts(fig)
    assert "patient_007: AHA 17-segment infarct extent" in fig.get_suptitle()
    assert "infarct 12.3 % of LV myocardium" in fig.get_suptitle()
    for s in range(1, 16):
        assert f"{s}\n{5 * s:.0f} %" in texts
    assert "16\nn/a" in texts
    assert "17\nnot\nassessed" in texts
    assert {"anterior", "septal", "inferior", "lateral"} <= set(texts)
    assert "infarct extent (% of segment myocardium)" in texts
    assert any("infarcted segment" in t for t in texts) and "17 apex: not assessed" in texts
    assert any("anterior RV insertion point" in t for t in texts)


def test_evaluation_figures_texts() -> None:
    result = {"subjects": ["a", "b", "c"],
              "motion": {"n_subjects": 3, "myo_dice": 0.9, "myo_dice_identity": 0.5},
              "registration": {"skipped": "no LGE"},
              "segmentation": {"n_subjects": 3, "infarct_dice": 0.7, "segment_auc": 0.95,
                               "baseline_no_infarct": {"infarct_dice": 0.0, "segment_auc": 0.5}}}
    texts = figures.figure_texts(figures.summary_figure(result))
    assert "motion (n = 3)" in texts and "segmentation (n = 3)" in texts
    assert not any(t.startswith("registration") for t in texts)  # skipped stage: no panel
    assert {"0.90", "0.50", "0.70", "0.95", "model", "baseline"} <= set(texts)
    ba = figures.figure_texts(figures.bland_altman_figure([10.0, 20.0, 0.0], [12.0, 19.0, 1.0], ["a", "b", "c"]))
    assert "Bland\u2013Altman: infarct size (n = 3 subjects)" in ba and "bias +0.67 points" in ba
    assert "predicted \u2212 true infarct size (points)" in ba
    roc = figures.figure_texts(figures.roc_figure([0.9, 0.8, 0.1, 0.3], [True, True, False, False], 1.0))
    assert "model (AUC 1.000)" in roc and "true positive rate (sensitivity)" in roc


def test_roc_points_match_definition() -> None:
    fpr, tpr = figures.roc_points([0.9, 0.4, 0.4, 0.1], [True, False, True, False])
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0, 1.0])


def test_a_kfold_evaluation_draws_its_pooled_figures(tmp_path) -> None:
    seg = {"n_subjects": 4, "infarct_dice": 0.6, "segment_auc": 0.8, "baseline_no_infarct": {"segment_auc": 0.5},
           "per_subject": {"subject": ["a", "b", "c", "d"], "infarct_percent_true": [10.0, 0.0, 20.0, 5.0],
                           "infarct_percent_pred": [12.0, 1.0, 18.0, 4.0]},
           "segment_roc": {"labels": [True, False, True, False], "scores": [0.5, 0.1, 0.4, 0.2]}}
    result = {"source": "2 folds", "cross_validation": {"folds": {}, "pooled": {"subjects": list("abcd"),
                                                                                "segmentation": seg}}}
    written = figures.write_evaluation_figures(result, tmp_path)
    assert sorted(p.rsplit("/", 1)[1] for p in written) == ["bland_altman.png", "segment_roc.png", "summary.png"]
