"""k-fold ensemble on the phantom (issue 15): does averaging the folds help, and does their disagreement
say where the prediction is wrong?

    python benchmarks/cv_ensemble.py [--config configs/phantom.yaml] [--run-dir runs/cv_ensemble]
                                     [--folds 5] [--test-seed 9101] [--test-subjects 12] [--reduced]
                                     [--skip-train] [--json FILE]

Trains ``--folds`` folds (``submit --folds K --mode resume``, local processes), then scores unseen
phantom subjects (another seed, with cine labels so they can be scored; generated once into the run
folder) from the cine alone, as ``predict`` runs:

* per fold and for the ensemble (argmax of the mean fold probability): infarct Dice over subjects
  with an infarct, and infarct size error (absolute, points of % of myocardium) over all subjects;
* the ensemble beside the mean single fold (the mean of the folds' own figures);
* the Spearman rank correlation between each subject's predicted uncertainty (mean fold
  disagreement over the predicted myocardium, as report.json gives it) and the ensemble's
  infarct size error for that subject.

``--reduced`` trains a smaller phantom for fewer epochs (``REDUCED``) and scores 8 subjects unless
``--test-subjects`` says otherwise, for a
machine that cannot afford the full run; the printout says so. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mi_pipeline import ensemble, metrics  # noqa: E402
from mi_pipeline.config import load_config  # noqa: E402
from mi_pipeline.data.phantom import generate_dataset  # noqa: E402
from mi_pipeline.evaluation import load_subjects  # noqa: E402
from mi_pipeline.inference import (  # noqa: E402
    fold_checkpoints,
    fold_probabilities,
    inference_device,
    load_ensemble,
)
from mi_pipeline.stages.registry import inference_stages  # noqa: E402

REDUCED = ["data.phantom.subjects=24", "motion.epochs=1", "registration.epochs=4", "registration.refine_steps=50",
           "segmentation.epochs=12"]


def score(fold_probs: np.ndarray, truth: np.ndarray) -> dict:
    """Per fold and ensemble: infarct Dice (None without infarct), size error; the ensemble's uncertainty."""
    t_myo, t_inf = np.isin(truth, (2, 3)), truth == 3
    true_pct = metrics.infarct_percent(t_myo, t_inf)
    has = bool(t_inf.any())

    def figures(label: np.ndarray) -> dict:
        p_myo, p_inf = label > 0, label == ensemble.INFARCT
        return {"infarct_dice": metrics.dice(p_inf, t_inf) if has else None,
                "size_error": abs(metrics.infarct_percent(p_myo, p_inf) - true_pct)}

    agreement = ensemble.agree(fold_probs)
    label = agreement.label
    return {"folds": [figures(p.argmax(axis=1)) for p in fold_probs], "ensemble": figures(label),
            "uncertainty": agreement.mean_uncertainty(label > 0), "true_percent": true_pct}


def mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "phantom.yaml")
    p.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "cv_ensemble")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--test-seed", type=int, default=9101)
    p.add_argument("--test-subjects", type=int, default=None, help="unseen subjects to score (default 12; 8 reduced)")
    p.add_argument("--reduced", action="store_true", help="smaller phantom, fewer epochs (see REDUCED)")
    p.add_argument("--skip-train", action="store_true", help="score the run as it is")
    p.add_argument("--json", type=Path, default=None, help="write the per-subject results here")
    args = p.parse_args()
    overrides = [*(REDUCED if args.reduced else []), f"cv.folds={args.folds}"]
    n_test = args.test_subjects or (8 if args.reduced else 12)
    cfg = load_config(args.config, overrides)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    wall0 = time.monotonic()
    if not args.skip_train:
        sets = [a for o in overrides for a in ("--set", o)]
        subprocess.run([sys.executable, "-m", "mi_pipeline.submit", "--mode", "resume", "--executor", "local",
                        "--config", str(args.config), *sets, "--run-dir", str(args.run_dir)], check=True, env=env)
    train_min = (time.monotonic() - wall0) / 60

    params = replace(cfg.data.phantom, seed=args.test_seed, subjects=n_test, cine_labels=True)
    test_root = args.run_dir / f"unseen_seed{params.seed}_n{n_test}"
    if not (test_root / ".phantom.json").exists():
        generate_dataset(test_root, params)
    subjects, source = load_subjects(cfg, args.run_dir, "test", test_root, "generic", log=lambda m: None)
    stages = inference_stages(cfg)
    models = load_ensemble(cfg, fold_checkpoints(args.run_dir, stages), stages, inference_device(cfg))
    rows = {s.id: score(fold_probabilities(models, s), s.cine_label[:, 0]) for s in subjects}

    k = len(models.folds)
    per_fold = [{m: mean([r["folds"][i][m] for r in rows.values()]) for m in ("infarct_dice", "size_error")}
                for i in range(k)]
    ens = {m: mean([r["ensemble"][m] for r in rows.values()]) for m in ("infarct_dice", "size_error")}
    single = {m: mean([f[m] for f in per_fold]) for m in ("infarct_dice", "size_error")}
    rho = metrics.spearman([r["uncertainty"] for r in rows.values()], [r["ensemble"]["size_error"] for r in rows.values()])

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    print(f"\n{'REDUCED run (' + ', '.join(REDUCED) + ')' if args.reduced else 'full run'}; {k} folds of "
          f"{args.config.name}; scored on {len(rows)} unseen subjects ({source}), "
          f"{sum(r['folds'][0]['infarct_dice'] is not None for r in rows.values())} with an infarct")
    if not args.skip_train:
        print(f"training: {train_min:.1f} min wall")
    print(f"{'':22} {'infarct Dice':>12} {'size error (points)':>20}")
    for i, f in enumerate(per_fold):
        print(f"{'fold ' + str(i):22} {fmt(f['infarct_dice']):>12} {fmt(f['size_error']):>20}")
    print(f"{'mean single fold':22} {fmt(single['infarct_dice']):>12} {fmt(single['size_error']):>20}")
    print(f"{'ensemble (' + str(k) + ' folds)':22} {fmt(ens['infarct_dice']):>12} {fmt(ens['size_error']):>20}")
    print(f"Spearman rho, predicted uncertainty vs ensemble size error (per subject, n={len(rows)}): {fmt(rho)}")
    if args.json:
        args.json.write_text(json.dumps({"per_fold": per_fold, "mean_single_fold": single, "ensemble": ens,
                                         "spearman_uncertainty_vs_size_error": rho, "subjects": rows,
                                         "reduced": args.reduced}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
