"""Cross-validated evaluation of a k-fold run: the library behind ``evaluate`` on such a run.

* every fold scored on its own held-out subjects (the fold's ``val`` split, which its models never
  trained on), exactly as ``evaluation.evaluate`` scores a run;
* the pooled figures: the folds' per-subject rows put together (each non-test subject is held out
  by exactly one fold, so every subject counts once) and summarised the same way (mean, sd, n);
* the ensemble of all folds on the run's test split, which no fold saw: segmentation from the mean
  fold probability, each subject's fold disagreement beside its error, and their rank correlation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mi_pipeline import metrics
from mi_pipeline.config import Config
from mi_pipeline.data import cache
from mi_pipeline.data import folds as fold_split
from mi_pipeline.evaluation import eval_segmentation, evaluate, format_table, load_subjects
from mi_pipeline.graph import MODEL_STAGES
from mi_pipeline.inference import fold_checkpoints, inference_device, load_ensemble
from mi_pipeline.stages.registry import inference_stages


def evaluate_cv(cfg: Config, run_dir: Path, *, split: str = "test", stages: tuple[str, ...] | None = None,
                data_root: Path | None = None, fmt: str | None = None, log=print) -> dict[str, Any]:
    """Folds on their held-out subjects, pooled, and the ensemble on ``split`` (or on ``data_root``)."""
    roots = fold_split.fold_roots(Path(run_dir))
    fold_checkpoints(run_dir, stages=())  # every fold the split lists has its folder, or one error line
    folds: dict[str, dict[str, Any]] = {}
    for root in roots:
        log(f"evaluate: fold {root.name} on its held-out (val) subjects")
        folds[root.name] = evaluate(cfg, root, split="val", stages=stages, log=log)
    pooled: dict[str, Any] = {"source": f"{len(roots)} folds, each on its held-out subjects",
                              "subjects": [s for f in folds.values() for s in f["subjects"]]}
    for stage in MODEL_STAGES:
        sections = [f[stage] for f in folds.values() if stage in f and "per_subject" in f[stage]]
        if sections:
            pooled[stage] = pool(sections)
    result: dict[str, Any] = {"source": f"{run_dir}: {len(roots)}-fold cross-validation",
                              "cross_validation": {"folds": folds, "pooled": pooled}}
    if stages is None or "segmentation" in stages:
        result["ensemble"] = _ensemble_on(cfg, Path(run_dir), split, data_root, fmt, log)
    return result


def pool(sections: list[dict[str, Any]]) -> dict[str, Any]:
    """One stage's per-subject rows from several folds, summarised as ``evaluation`` does one run."""
    keys = list(sections[0]["per_subject"])
    rows = {key: [v for s in sections for v in s["per_subject"].get(key, [])] for key in keys}
    out: dict[str, Any] = {"n_subjects": len(rows[keys[0]])}
    for key, values in rows.items():
        if key != "subject" and all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool)
                                    for v in values):
            stats = metrics.summary(values)
            out[key], out[f"{key}_sd"], out[f"{key}_n"] = stats["mean"], stats["sd"], stats["n"]
    if "infarct_size_error" in out:  # the name evaluation gives the mean absolute size error
        out["infarct_size_mae"], out["infarct_size_mae_sd"] = out.pop("infarct_size_error"), out.pop(
            "infarct_size_error_sd")
    if all("segment_roc" in s for s in sections):  # segmentation: the AUC and baseline over all segments
        labels = [v for s in sections for v in s["segment_roc"]["labels"]]
        scores = [v for s in sections for v in s["segment_roc"]["scores"]]
        out["segment_auc"] = metrics.roc_auc(scores, labels)
        out["segment_roc"] = {"labels": labels, "scores": scores}
        true = [v for v in rows.get("infarct_percent_true", []) if v is not None]
        out["baseline_no_infarct"] = {"infarct_size_mae": metrics.summary(true)["mean"], "fp_infarct_percent": 0.0,
                                      "infarct_dice": 0.0 if any(rows.get("has_infarct", [])) else None,
                                      "segment_auc": 0.5 if out["segment_auc"] is not None else None}
    notes = [s["infarct_not_estimated"] for s in sections if s.get("infarct_not_estimated")]
    if notes:
        out["infarct_not_estimated"] = notes[0]
    out["per_subject"] = rows
    return out


def _ensemble_on(cfg: Config, run_dir: Path, split: str, data_root: Path | None, fmt: str | None,
                 log) -> dict[str, Any]:
    if data_root is None and not cache.read_split(run_dir, split):
        return {"skipped": f"split {split!r} is empty (data.test_fraction = 0?)"}
    stages = inference_stages(cfg)
    torch.set_num_threads(cfg.threads)
    models = load_ensemble(cfg, fold_checkpoints(run_dir, stages), stages, inference_device(cfg))
    subjects, source = load_subjects(cfg, run_dir, split, data_root, fmt, log=log)
    log(f"evaluate: {len(models.folds)}-fold ensemble on {source}")
    return {"source": source, "subjects": [s.id for s in subjects],
            "segmentation": eval_segmentation(models, subjects, log)}


def format_cv_table(result: dict[str, Any]) -> str:
    """Each fold's table, the pooled one, then the ensemble's."""
    cv = result["cross_validation"]
    parts = [f"{result['source']}"]
    for k, fold in cv["folds"].items():
        parts.append(f"--- fold {k} (held-out val) ---\n" + format_table(fold))
    parts.append("--- pooled over folds ---\n" + format_table(cv["pooled"]))
    ens = result.get("ensemble")
    if ens and "skipped" not in ens:
        text = format_table(ens)
        seg = ens["segmentation"]
        if "skipped" not in seg:
            rho = seg.get("uncertainty_error_spearman")
            why = seg.get("uncertainty_error_spearman_note") or "not computable"
            text += f"\nfold disagreement vs infarct size error, Spearman rho: {why if rho is None else f'{rho:.3f}'}"
        parts.append("--- ensemble of the folds ---\n" + text)
    elif ens:
        parts.append(f"--- ensemble of the folds --- skipped: {ens['skipped']}")
    return "\n".join(parts)
