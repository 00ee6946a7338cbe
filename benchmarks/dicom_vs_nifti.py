"""predict on DICOM versus NIfTI: the same phantom subjects, written both ways, must give the same infarct %.

    python benchmarks/dicom_vs_nifti.py --run-dir runs/demo [--subjects 6] [--seed 4242] [--work DIR]

Writes each phantom subject as NIfTI (generic layout) and as DICOM in both scanner layouts (one series;
one series per slice, rescale slope 0.5 / intercept -100), runs ``predict`` on each, and prints per
subject the infarct % from NIfTI, from each DICOM layout, the phantom's truth, the AHA anchor used and
the insertion-angle error against the phantom's truth (slices within 15 degrees). Exit status 0 when
every DICOM result is within 0.1 point of its NIfTI result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mi_pipeline import inference  # noqa: E402
from mi_pipeline.cli import predict  # noqa: E402
from mi_pipeline.cli.common import run_main  # noqa: E402
from mi_pipeline.clinical import aha  # noqa: E402
from mi_pipeline.config import PhantomConfig  # noqa: E402
from mi_pipeline.data.dicom_export import write_series  # noqa: E402
from mi_pipeline.data.phantom import generate_subject, write_subject  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--subjects", type=int, default=6)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="dicom_vs_nifti_"))
    params = PhantomConfig(subjects=args.subjects, seed=args.seed, size=args.size, slices=args.slices,
                           frames=args.frames)
    truth = {}
    for i in range(args.subjects):
        s = generate_subject(params, i)
        write_subject(s, work / "nifti" / s.id)
        for layout in ("series", "per_slice"):
            write_series(s.cine, s.cine_affine, work / layout / s.id, patient_id=s.id, slope=0.5, intercept=-100.0,
                         frame_ms=s.frame_ms, per_slice_series=layout == "per_slice")
        truth[s.id] = s.info["truth"]
    for kind in ("nifti", "series", "per_slice"):
        code = run_main(predict.main, ["--cine", str(work / kind), "--out", str(work / f"out_{kind}"),
                                       "--run-dir", str(args.run_dir)])
        if code:
            return code
    rows, worst = [], 0.0
    print(f"{'subject':12} {'nifti %':>8} {'dicom %':>8} {'per-slice %':>11} {'truth %':>8}  anchor      angle<=15deg")
    for sid in sorted(truth):
        reps = {k: json.loads((work / f"out_{k}" / sid / "report.json").read_text()) for k in ("nifti", "series", "per_slice")}
        diff = max(abs(reps[k]["infarct_percent"] - reps["nifti"]["infarct_percent"]) for k in ("series", "per_slice"))
        worst = max(worst, diff)
        anchor = reps["nifti"]["aha_anchor"]  # slice order of the phantom's truth (DICOM may reverse it)
        within, total = _angle_score(args.run_dir, work / "nifti" / sid, anchor, truth[sid])
        rows.append({"subject": sid, **{k: reps[k]["infarct_percent"] for k in reps},
                     "truth": truth[sid]["infarct_percent"], "anchor": anchor["method"], "angle_within": within,
                     "angle_slices": total})
        print(f"{sid:12} {reps['nifti']['infarct_percent']:8.2f} {reps['series']['infarct_percent']:8.2f} "
              f"{reps['per_slice']['infarct_percent']:11.2f} {truth[sid]['infarct_percent']:8.2f}  "
              f"{anchor['method']:10}  {within}/{total}")
    print(f"largest DICOM - NIfTI infarct % difference: {worst:.3f} points; outputs under {work}")
    (work / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if worst <= 0.1 else 1


def _angle_score(run_dir: Path, nifti_dir: Path, anchor: dict, truth: dict) -> tuple[int, int]:
    """Slices whose predicted-myocardium anchor lies within 15 deg of the phantom's true insertion direction.

    The report's angles are on predict's crop grid, rebuilt here from the NIfTI exactly as predict builds it.
    """
    from mi_pipeline.data.preprocess import preprocess_subject

    cfg = inference.stored_config(run_dir / "checkpoints")
    if anchor["method"] == "fixed":
        return 0, sum(1 for t in truth["rv_insertion_anterior_ras"] if t is not None)
    raw = inference.read_cine(nifti_dir / "cine.nii.gz", nifti_dir.name,
                            ed=yaml.safe_load((nifti_dir / "info.yaml").read_text())["ed"])  # the crop grid ignores ed
    sub = preprocess_subject(raw, cfg.data)
    within = total = 0
    for _k, (got, direction) in enumerate(zip(anchor["anterior_insertion_deg"], truth["rv_insertion_anterior_ras"])):
        if direction is None or got is None:
            continue
        total += 1
        want = aha.angle_of_world_dir(sub.affine, np.asarray(direction))
        within += aha.angle_error_deg(want, got) <= 15.0
    return within, total


if __name__ == "__main__":
    sys.exit(main())
