"""Score every trained stage on held-out subjects, beside trivial baselines: the library behind ``evaluate``.

Subjects: the run's ``--split`` (default ``test``, from ``data/splits``, preprocessed cache), or
``--data-root DIR`` -- a separately generated dataset (e.g. a phantom made with another seed and
other parameters), read with ``data.format``'s adapter and preprocessed in memory exactly as step 1
would. Each stage is scored beside its trivial baseline:

* motion: Dice of the ED myocardium warped to ES vs the true ES myocardium (identity = no motion),
  % of myocardial pixels whose Jacobian determinant is <= 0, over all frames;
* registration: myocardium Dice of the LGE labels carried into cine space vs the cine ED
  myocardium, after vs before (no registration);
* segmentation (from the cine alone, as ``predict`` runs it): infarct Dice and 95 % Hausdorff (mm)
  over subjects with an infarct, myocardium Dice, infarct size (% of myocardium) absolute error over
  all subjects, the predicted infarct % of subjects without one (false positives), and the AUC of
  per-AHA-segment detection (segment infarcted when >= 10 % infarct in truth; score = predicted
  extent) pooled over subjects; baseline "no infarct". Where the cine labels mark the RV: the RV Dice of
  a model that learnt it, and how often the AHA anchor ``predict`` would place lies within 20 degrees
  of the labels' (``rv_scores``).

Truth is the cine labels (phantom, ACDC/M&Ms ED/ES masks). A stage whose truth the data cannot
provide is reported as skipped with the reason. Summary values are means over subjects; ``*_sd``
and ``per_subject`` lists sit beside them. A figure that cannot be computed (a rank correlation of
fewer than 3 subjects) is None with a ``*_note`` saying why. Each stage's subject loop reports its
progress through ``log`` (``engine.runlog.progress``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mi_pipeline import metrics
from mi_pipeline.clinical import aha
from mi_pipeline.clinical.io import anchor_for
from mi_pipeline.clinical.trust import model_provenance
from mi_pipeline.config import Config
from mi_pipeline.data import cache
from mi_pipeline.data.cache import Subject
from mi_pipeline.engine.runlog import progress
from mi_pipeline.errors import CheckpointError, InputError
from mi_pipeline.graph import MODEL_STAGES
from mi_pipeline.inference import (
    Models,
    inference_device,
    load_models,
    segment_with_passes,
    stored_config,
)
from mi_pipeline.layout import RunLayout
from mi_pipeline.stages import common, motion, registration, registration_qa, registry, segmentation

# --- subjects -------------------------------------------------------------------------------------


def load_subjects(cfg: Config, run_dir: Path, split: str, data_root: Path | None, fmt: str | None,
                  log=print) -> tuple[list[Subject], str]:
    if data_root is not None:
        from mi_pipeline.data import adapters
        from mi_pipeline.data.preprocess import preprocess_subject

        fmt = fmt or cfg.data.format
        if fmt == "phantom":
            fmt = "generic"  # a phantom folder is in the generic layout
        ids = adapters.list_subjects(fmt, data_root)
        subjects = []
        for sid in ids:
            raw = adapters.load_subject(fmt, data_root, sid)
            subjects.append(preprocess_subject(raw, cfg.data))
        log(f"evaluate: {len(subjects)} subject(s) from {data_root} ({fmt})")
        return subjects, f"{data_root} ({fmt})"
    if cache.read_manifest(run_dir) is None:
        raise InputError(f"{cache.cache_dir(run_dir)}: no prepared data in this run; run step 1 or pass --data-root")
    ids = cache.read_split(run_dir, split)
    if not ids:
        raise InputError(f"{cache.splits_dir(run_dir) / (split + '.txt')}: split {split!r} is empty "
                         f"(data.test_fraction = 0?); choose another --split or pass --data-root")
    return [cache.load_subject(run_dir, s) for s in ids], f"{run_dir} split {split}"


# --- stages ---------------------------------------------------------------------------------------


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _silent(_: str) -> None:
    return None


def _each(subjects: list[Subject], what: str, log: Callable[[str], None]) -> Iterator[Subject]:
    return progress(subjects, len(subjects), f"evaluate: {what}", log, "subject(s)")


def eval_motion(model: torch.nn.Module, subjects: list[Subject], log: Callable[[str], None] = _silent) -> dict[str, Any]:
    rows = []
    for s in _each(subjects, "motion", log):
        if s.cine_label is None:
            continue
        fields = motion.motion_fields(model, _t(s.cine))  # (Z, T, 2, H, W)
        labels = _t(s.cine_label).long()
        myo = common.myo(labels)
        warped = common.myo(common.warp_labels(labels[:, 0], fields[:, s.es]))
        fold_mask = myo[:, 1:].reshape(-1, *myo.shape[-2:])
        ddf = fields[:, 1:].reshape(-1, 2, *fields.shape[-2:])
        rows.append({
            "subject": s.id,
            "myo_dice": metrics.dice(warped.numpy(), myo[:, s.es].numpy()),
            "myo_dice_identity": metrics.dice(myo[:, 0].numpy(), myo[:, s.es].numpy()),
            "folding_percent": common.folding_percent(ddf, fold_mask),
            "folding_percent_es": common.folding_percent(fields[:, s.es], myo[:, s.es]),
        })
    if not rows:
        return {"skipped": "no subject has cine labels (motion is scored on true ED/ES myocardium)"}
    return _summarise(rows, ("myo_dice", "myo_dice_identity", "folding_percent", "folding_percent_es"))


def eval_registration(cfg: Config, model: torch.nn.Module, subjects: list[Subject],
                      log: Callable[[str], None] = _silent) -> dict[str, Any]:
    rows = []
    for s in _each(subjects, "registration (with its QA)", log):
        if s.lge is None or s.lge_label is None:
            continue
        if s.cine_label is None:
            continue
        # the QA's per-subject choice (identity / rigid / affine / deformable), as segmentation uses it
        warped, qa = registration.register_subject(cfg, model, _t(s.lge), _t(s.lge_label).long(), _t(s.cine[:, 0]),
                                                   float(s.spacing[0]), s.id)
        truth = common.myo(_t(s.cine_label[:, 0]).long()).numpy()
        rows.append({
            "subject": s.id,
            "myo_dice_after": metrics.dice(common.myo(warped).numpy(), truth),
            "myo_dice_before": metrics.dice(common.myo(_t(s.lge_label).long()).numpy(), truth),
            "chosen": qa.chosen, "edge_alignment_gain": qa.gain_over_identity, "qa_confident": qa.confident,
        })
    if not rows:
        return {"skipped": "needs LGE images with LGE labels and cine labels (true myocardium in cine space); "
                           "this data has none (e.g. ACDC / M&Ms have no LGE)"}
    out = _summarise(rows, ("myo_dice_before", "myo_dice_after", "edge_alignment_gain"))
    out["chosen"] = {c: sum(r["chosen"] == c for r in rows) for c in registration_qa.CANDIDATES}
    out["worse_than_unregistered"] = sum(r["myo_dice_after"] < r["myo_dice_before"] - 0.01 for r in rows)
    return out


INFARCT_NOT_ESTIMATED = ("myocardium-only model (trained on cine labels, no LGE): it never learnt the infarct, "
                         "so only its myocardium is scored")


def eval_segmentation(models: Models, subjects: list[Subject], log: Callable[[str], None] = _silent) -> dict[str, Any]:
    if _myocardium_only(models):
        return _eval_myocardium(models, subjects, log)
    rows, seg_labels, seg_scores = [], [], []
    for s in _each(subjects, "segmentation" + (f" ({len(models.folds)}-fold ensemble)" if models.folds else ""), log):
        if s.cine_label is not None:
            truth, reference = s.cine_label[:, 0], "cine labels"
        elif models.registration is not None and s.lge is not None and s.lge_label is not None:
            truth = registration.register_subject(models.cfg, models.registration, _t(s.lge), _t(s.lge_label).long(),
                                                  _t(s.cine[:, 0]), float(s.spacing[0]), s.id)[0].numpy()
            reference = "registered LGE labels"
        else:
            continue
        segmented = segment_with_passes(models, s)
        agreement, pred = segmented.agreement, segmented.label
        t_myo, t_inf = np.isin(truth, (2, 3)), truth == 3
        p_myo, p_inf = pred > 0, pred == 2
        true_pct, pred_pct = metrics.infarct_percent(t_myo, t_inf), metrics.infarct_percent(p_myo, p_inf)
        has = bool(t_inf.any())
        labels, scores = metrics.segment_scores(t_myo, t_inf, p_myo, p_inf)
        seg_labels += labels
        seg_scores += scores
        rows.append({
            "subject": s.id, "reference": reference, "has_infarct": has,
            "myo_dice": metrics.dice(p_myo, t_myo),
            "infarct_dice": metrics.dice(p_inf, t_inf) if has else None,
            "hd95_mm": metrics.hd95_mm(p_inf, t_inf, s.spacing) if has else None,
            "infarct_percent_true": true_pct, "infarct_percent_pred": pred_pct,
            "infarct_size_error": abs(pred_pct - true_pct),
            "fp_infarct_percent": None if has else pred_pct,
            "segments_infarcted": int(sum(labels)), "segments": len(labels),
            **rv_scores(s, pred > 0, segmented.rv),
        })
        if agreement is not None:  # does the folds' disagreement say where the ensemble errs?
            rows[-1]["ensemble_uncertainty"] = agreement.mean_uncertainty(p_myo)
    if not rows:
        return {"skipped": "no truth for these subjects (needs cine labels, or LGE + labels and a trained "
                           "registration model)"}
    out = _summarise(rows, ("infarct_dice", "myo_dice", "hd95_mm", "infarct_size_error", "fp_infarct_percent",
                            "infarct_percent_true", "infarct_percent_pred", *RV_KEYS))
    if models.folds:
        pairs = ([r["ensemble_uncertainty"] for r in rows], [r["infarct_size_error"] for r in rows])
        out["uncertainty_error_spearman"] = metrics.spearman(*pairs)
        out["uncertainty_error_spearman_note"] = spearman_note(*pairs)
    out["infarct_size_mae"] = out.pop("infarct_size_error")
    out["infarct_size_mae_sd"] = out.pop("infarct_size_error_sd")
    out["segment_auc"] = metrics.roc_auc(seg_scores, seg_labels)
    out["segment_roc"] = {"labels": [bool(v) for v in seg_labels], "scores": [float(v) for v in seg_scores]}
    out["segments_scored"] = len(seg_labels)
    out["segments_infarcted"] = int(sum(seg_labels))
    out["subjects_with_infarct"] = sum(r["has_infarct"] for r in rows)
    out["hd95_undefined"] = sum(1 for r in rows if r["has_infarct"] and r["hd95_mm"] is None)
    true_pcts = [r["infarct_percent_true"] for r in rows]
    out["baseline_no_infarct"] = {
        "infarct_dice": 0.0 if out["subjects_with_infarct"] else None,
        "infarct_size_mae": float(np.mean(true_pcts)),
        "segment_auc": 0.5 if metrics.roc_auc([0.0] * len(seg_labels), seg_labels) is not None else None,
        "fp_infarct_percent": 0.0,
    }
    return out


def _myocardium_only(models: Models) -> bool:
    """Whether the segmentation model (every fold's, for an ensemble) learnt no infarct: ``load_models``
    decided that from the checkpoint's facts and wrapped it."""
    return all(isinstance(m.segmentation, segmentation.MyocardiumOnly) for m in models.folds or [models])


def _eval_myocardium(models: Models, subjects: list[Subject], log: Callable[[str], None]) -> dict[str, Any]:
    """A myocardium-only model scored on what it learnt: its myocardium against the cine labels.
    Infarct rows would compare "no infarct" with the truth and read as a (bad) infarct result."""
    rows = []
    for s in _each(subjects, "segmentation (myocardium only)", log):
        if s.cine_label is None:
            continue
        segmented = segment_with_passes(models, s)
        truth = s.cine_label[:, 0]
        rows.append({"subject": s.id, "reference": "cine labels",
                     "myo_dice": metrics.dice(segmented.label > 0, np.isin(truth, (2, 3))),
                     **rv_scores(s, segmented.label > 0, segmented.rv)})
    if not rows:
        return {"skipped": "no cine labels for these subjects (a myocardium-only model is scored on them)",
                "infarct_not_estimated": INFARCT_NOT_ESTIMATED}
    return {**_summarise(rows, ("myo_dice", *RV_KEYS)), "infarct_not_estimated": INFARCT_NOT_ESTIMATED}


RV_KEYS = ("rv_dice", "rv_anchor_within_20deg")
RV_ANCHOR_DEG = 20.0


def rv_scores(subject: Subject, myo: np.ndarray, rv: np.ndarray | None) -> dict[str, float | None]:
    """Where the subject's cine labels mark the RV (code 5): the Dice of the RV the model found (None for a
    model that did not learn it), and the share of mid-ventricular slices on which the AHA anchor ``predict``
    would place (the model's RV, else the image rule, with the model's myocardium) lies within 20 degrees of
    the one the labels give (their RV and myocardium). Both None without RV labels."""
    truth = subject.cine_label[:, 0] if subject.cine_label is not None else None
    if truth is None or not (truth == cache.RV_CODE).any():
        return dict.fromkeys(RV_KEYS)
    t_rv, t_myo = truth == cache.RV_CODE, np.isin(truth, (2, 3))
    reference = aha.anchor_from_labels(t_rv, t_myo, subject.affine, float(subject.spacing[0]))
    placed = anchor_for(dataclasses.replace(subject, cine_label=None), myo, rv)
    mids = [k for k, level in enumerate(metrics.level_of_slices(t_myo)) if level == "mid" and reference.found[k]]
    within = [k for k in mids if placed.found[k] and placed.angles_deg[k] is not None
              and aha.angle_error_deg(float(reference.angles_deg[k]), float(placed.angles_deg[k])) <= RV_ANCHOR_DEG]
    return {"rv_dice": metrics.dice(rv, t_rv) if rv is not None else None,
            "rv_anchor_within_20deg": len(within) / len(mids) if mids else None}


def spearman_note(a: list[float], b: list[float]) -> str | None:
    """Why ``metrics.spearman`` of these gives no value (None when it gives one)."""
    if len(a) < 3:
        return f"n = {len(a)} < 3 subjects: no rank correlation"
    if np.ptp(np.asarray(a, float)) == 0 or np.ptp(np.asarray(b, float)) == 0:
        return "one side is the same for every subject: no rank correlation"
    return None


def _summarise(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_subjects": len(rows)}
    for key in keys:
        stats = metrics.summary([r[key] for r in rows])
        out[key] = stats["mean"]
        out[f"{key}_sd"] = stats["sd"]
        out[f"{key}_n"] = stats["n"]
    out["per_subject"] = {key: [r[key] for r in rows] for key in rows[0]}
    return out


# --- whole run ----------------------------------------------------------------------------------


def trained_stages(ckpt_root: Path) -> list[str]:
    """Model stages with a ``best_model.pth`` under ``ckpt_root``, in pipeline order."""
    return [s for s in MODEL_STAGES if registry.best_path(ckpt_root, s).is_file()]


def run_config(ckpt_root: Path) -> Config:
    """The config the run was trained with, as its most downstream trained stage stored it."""
    trained = trained_stages(ckpt_root)
    if not trained:
        raise CheckpointError(f"{ckpt_root}: no trained stage (no <stage>/best_model.pth); train first")
    return stored_config(ckpt_root, trained[-1])


def evaluate(cfg: Config, run_dir: Path, *, split: str = "test", data_root: Path | None = None,
             fmt: str | None = None, stages: tuple[str, ...] | None = None, ckpt_root: Path | None = None,
             log=print) -> dict[str, Any]:
    ckpt_root = ckpt_root or RunLayout(run_dir).checkpoints
    trained = trained_stages(ckpt_root)
    wanted = tuple(stages) if stages else tuple(trained)
    if not wanted:
        raise CheckpointError(f"{ckpt_root}: no trained stage (no <stage>/best_model.pth); train first")
    for stage in wanted:
        if stage not in trained:
            raise CheckpointError(f"{registry.best_path(ckpt_root, stage)}: missing, stage {stage} is not trained")
    if "segmentation" in wanted and cfg.segmentation.motion_features and "motion" not in trained:
        raise CheckpointError(f"{registry.best_path(ckpt_root, 'motion')}: missing; segmentation needs the motion model")
    torch.set_num_threads(cfg.threads)
    device = inference_device(cfg)
    subjects, source = load_subjects(cfg, run_dir, split, data_root, fmt, log=log)
    needed = set(wanted) | (set(registry.inference_stages(cfg)) if "segmentation" in wanted else set())
    models = load_models(cfg, ckpt_root, tuple(s for s in MODEL_STAGES if s in needed), device)
    result: dict[str, Any] = {"source": source, "subjects": [s.id for s in subjects],
                              "not_trained": [s for s in MODEL_STAGES if s not in trained],
                              "checkpoints": models.checkpoints,
                              "trained_on": model_provenance(models.checkpoints[wanted[-1]])["summary"]}
    if "motion" in wanted:
        result["motion"] = eval_motion(models.motion, subjects, log)
    if "registration" in wanted:
        result["registration"] = eval_registration(cfg, models.registration, subjects, log)
    if "segmentation" in wanted:
        result["segmentation"] = eval_segmentation(models, subjects, log)
    return result


ROWS = (
    ("motion", "myo_dice", "myo_dice_identity", "ED->ES myocardium Dice", "identity"),
    ("motion", "folding_percent", None, "folding % (det J <= 0, myocardium)", ""),
    ("registration", "myo_dice_after", "myo_dice_before", "cine<->LGE myocardium Dice", "no registration"),
    ("segmentation", "infarct_dice", ("baseline_no_infarct", "infarct_dice"), "infarct Dice", "no infarct"),
    ("segmentation", "segment_auc", ("baseline_no_infarct", "segment_auc"), "AHA segment AUC", "no infarct"),
    ("segmentation", "infarct_size_mae", ("baseline_no_infarct", "infarct_size_mae"), "infarct size MAE (points)",
     "no infarct"),
    ("segmentation", "myo_dice", None, "myocardium Dice", ""),
    ("segmentation", "hd95_mm", None, "infarct HD95 (mm)", ""),
    ("segmentation", "rv_dice", None, "RV Dice (a model that learnt the RV)", ""),
    ("segmentation", "rv_anchor_within_20deg", None, "AHA anchor within 20 deg, mid slices", ""),
    ("segmentation", "fp_infarct_percent", ("baseline_no_infarct", "fp_infarct_percent"),
     "infarct % predicted, no-infarct subjects", "no infarct"),
)


def format_table(result: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"evaluated on {len(result['subjects'])} subject(s): {result['source']}",
             *([f"models trained on: {result['trained_on']}"] if result.get("trained_on") else []),
             f"{'stage':13} {'measure':42} {'ours (mean ± sd)':>18} {'baseline':>10}  baseline is"]
    for stage, key, base, label, base_name in ROWS:
        sec = result.get(stage)
        if sec is None:
            continue
        if "skipped" in sec:
            lines.append(f"{stage:13} skipped: {sec['skipped']}")
            continue
        if sec.get("infarct_not_estimated") and key not in sec:
            lines.append(f"{stage:13} infarct not estimated: {sec['infarct_not_estimated']}")
            continue
        value, sd = sec.get(key), sec.get(f"{key}_sd")
        if key in RV_KEYS and value is None:  # no RV labels (or no RV learnt): nothing to say
            continue
        ours = fmt(value) + (f" ± {sd:.3f}" if sd is not None else "")
        if isinstance(base, tuple):
            b = sec.get(base[0], {}).get(base[1])
        else:
            b = sec.get(base) if base else None
        lines.append(f"{stage:13} {label:42} {ours:>18} {fmt(b) if base else '':>10}  {base_name}")
    chosen = (result.get("registration") or {}).get("chosen")
    if chosen:  # what the registration QA kept per subject
        lines.append(f"{'registration':13} QA kept per subject: " + ", ".join(f"{c} {n}" for c, n in chosen.items())
                     + f"; worse than unregistered (Dice -0.01): {result['registration']['worse_than_unregistered']}")
    if result.get("not_trained"):
        lines.append(f"not trained (not scored): {', '.join(result['not_trained'])}")
    return "\n".join(dict.fromkeys(lines))
