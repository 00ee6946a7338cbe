"""Stage quality on the phantom: train configs/phantom.yaml, score unseen-seed subjects, print the table.

    python benchmarks/quality.py [--config configs/phantom.yaml] [--run-dir runs/phantom]
                                 [--test-seed 9001] [--skip-train] [--json FILE]

The test phantom is generated with a seed and acquisition parameters the training never saw
(another matrix size, slice count, frames per cycle, in-plane spacing); every subject also draws
its own heart size, wall thickness, infarct location/extent/transmurality, noise and breath-hold
shift. Training resumes an existing run (``submit --mode resume``); ``--fresh`` starts over.
Then ``predict`` runs on every unseen cine alone (no LGE) and its ``report.json`` infarct % is
compared with the phantom's truth. Exit status 0 when every target of issue 3 is met (evaluate's
targets, and predict within 5 points on every subject), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mi_pipeline.config import PhantomConfig  # noqa: E402
from mi_pipeline.data.phantom import generate_dataset  # noqa: E402

# (section, key, comparison, threshold) -- issue 3
TARGETS = [
    ("motion", "myo_dice", ">=", 0.85),
    ("motion", "folding_percent", "<=", 0.5),
    ("registration", "myo_dice_after", ">=", 0.85),
    ("segmentation", "infarct_dice", ">=", 0.70),
    ("segmentation", "segment_auc", ">=", 0.95),
    ("segmentation", "infarct_size_mae", "<=", 5.0),
    ("segmentation", "myo_dice", ">=", 0.85),
]
BASELINES = {("motion", "myo_dice"): ("motion", "myo_dice_identity"),
             ("registration", "myo_dice_after"): ("registration", "myo_dice_before"),
             ("segmentation", "infarct_dice"): ("segmentation", "baseline_no_infarct", "infarct_dice"),
             ("segmentation", "segment_auc"): ("segmentation", "baseline_no_infarct", "segment_auc"),
             ("segmentation", "infarct_size_mae"): ("segmentation", "baseline_no_infarct", "infarct_size_mae")}


def _get(result: dict, path: tuple[str, ...]):
    node = result
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def predict_errors(run_dir: Path, test_root: Path, env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """subject -> (predicted, true) infarct % of LV myocardium, from ``predict`` on the cines alone."""
    out = run_dir / f"predict_{test_root.name}"
    subprocess.run([sys.executable, "-m", "mi_pipeline.predict", "--cine", str(test_root), "--out", str(out),
                    "--run-dir", str(run_dir)], check=True, env=env, capture_output=True, text=True)
    pairs = {}
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir()):
        truth = yaml.safe_load((folder / "info.yaml").read_text())["truth"]["infarct_percent"]
        report = json.loads((out / folder.name / "report.json").read_text())
        pairs[folder.name] = (float(report["infarct_percent"]), float(truth))
    return pairs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "phantom.yaml")
    p.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "phantom")
    p.add_argument("--test-seed", type=int, default=9001)
    p.add_argument("--test-subjects", type=int, default=16)
    p.add_argument("--skip-train", action="store_true", help="score the run as it is")
    p.add_argument("--fresh", action="store_true", help="train from scratch")
    p.add_argument("--json", type=Path, default=None, help="write the evaluate result here")
    args = p.parse_args()

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.monotonic()
    if not args.skip_train:
        mode = "fresh" if args.fresh else "resume"
        subprocess.run([sys.executable, "-m", "mi_pipeline.submit", "--mode", mode, "--yes", "--executor", "local",
                        "--config", str(args.config), "--run-dir", str(args.run_dir)], check=True, env=env)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    train_wall = time.monotonic() - wall0
    train_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)

    test_root = args.run_dir / f"unseen_phantom_seed{args.test_seed}"
    params = PhantomConfig(subjects=args.test_subjects, seed=args.test_seed, size=88, slices=7, frames=20,
                           spacing_mm=1.7, slice_thickness_mm=9.0)
    if not (test_root / ".phantom.json").exists():
        generate_dataset(test_root, params)
    out = subprocess.run([sys.executable, "-m", "mi_pipeline.evaluate", "--run-dir", str(args.run_dir),
                          "--config", str(args.config), "--data-root", str(test_root), "--format", "generic",
                          "--json"], check=True, env=env, capture_output=True, text=True)
    result = json.loads(out.stdout)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")

    print(f"\nunseen test phantom: {test_root} (seed {args.test_seed}, {args.test_subjects} subjects, "
          f"size 88, 7 slices, 20 frames, 1.7 mm, 9 mm slices)")
    if not args.skip_train:
        print(f"training: {train_wall / 60:.1f} min wall, {train_cpu / 60:.1f} CPU-min")
    print(f"{'measure':36} {'ours':>16} {'baseline':>9} {'target':>9}  ok")
    all_ok = True
    for section, key, op, threshold in TARGETS:
        value = _get(result, (section, key))
        sd = _get(result, (section, f"{key}_sd"))
        base = _get(result, BASELINES[(section, key)]) if (section, key) in BASELINES else None
        ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        if (section, key) == ("motion", "myo_dice") and base is not None and value is not None:
            ok = ok and value >= base + 0.15
        all_ok &= ok
        v = "-" if value is None else f"{value:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
        b = "-" if base is None else f"{base:.3f}"
        print(f"{section + '.' + key:36} {v:>16} {b:>9} {op + str(threshold):>9}  {'yes' if ok else 'NO'}")
    seg = result.get("segmentation", {})
    print(f"{'segmentation.hd95_mm':36} {seg.get('hd95_mm') or float('nan'):>16.2f}")
    print(f"{'segmentation.fp_infarct_percent':36} {seg.get('fp_infarct_percent') or 0.0:>16.2f}   (no-infarct subjects)")

    pairs = predict_errors(args.run_dir, test_root, env)
    errors = {name: abs(pred - true) for name, (pred, true) in pairs.items()}
    within = sum(e <= 5.0 for e in errors.values())
    mae = sum(errors.values()) / len(errors)
    print(f"\npredict (cine only): infarct % MAE {mae:.2f} points, {within}/{len(errors)} within 5 points")
    for name, (pred, true) in pairs.items():
        if errors[name] > 5.0:
            print(f"  miss {name}: predicted {pred:.1f} %, truth {true:.1f} %")
    if args.json:
        result["predict"] = {"infarct_percent_mae": mae, "within_5_points": within, "subjects": len(errors),
                             "per_subject": {n: {"predicted": p, "truth": t} for n, (p, t) in pairs.items()}}
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    all_ok &= within == len(errors)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
