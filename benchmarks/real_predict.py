"""A trained run's ``predict`` on labelled real cines, scored against the expert labels.

    python -m benchmarks.real_predict FOLDER --run-dir RUN [--format acdc|mnms|auto] [--subjects ID ...]
        [--out DIR] [--json FILE]

What a user's answer would be: each cine goes through ``predict`` as a user runs it (label-free LV
localisation, the crop sized from the heart found, the crop check, flip-averaged segmentation, the
report), with the dataset's ED frame given (``--ed``; the labels are drawn there). Its myocardium
(``infarct_seg.nii.gz`` classes 1 and 2, on the cine's own grid) is compared with the labelled
myocardium at ED. Per subject and pooled: myocardium Dice, the crop's width, whether the check grew it,
the localisation method and the trust verdict; and the AHA anchor ``predict`` reported on the
mid-ventricular slices (found on the slice itself, and within 20 degrees of the insertion the labels' RV
gives on the same crop grid). ``benchmarks.real`` measures the label-free parts with the labelled
myocardium standing in for a model; this measures a model through them. Use held-out subjects (the run's
``data/splits/test.txt``, or another dataset): a subject the run trained on says nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.real import MYO_CODES, RV_CODE, RV_DEG, ed_labels_on, guess_format, unlabelled  # noqa: E402
from mi_pipeline import metrics  # noqa: E402
from mi_pipeline.cli import predict  # noqa: E402
from mi_pipeline.cli.common import run_main  # noqa: E402
from mi_pipeline.clinical import aha  # noqa: E402
from mi_pipeline.config import DataConfig  # noqa: E402
from mi_pipeline.data import adapters, preprocess  # noqa: E402
from mi_pipeline.data.generic import RawSubject  # noqa: E402
from mi_pipeline.evaluation import run_config  # noqa: E402


@dataclass
class Row:
    subject: str
    myo_dice: float
    crop_mm: float | None
    crop_grown: int | None
    method: str | None
    verdict: str | None
    implausible: bool | None
    infarct_percent: float | None
    rv_mid_slices: int
    rv_found: int
    rv_within: int
    anchor: str | None  # where predict's AHA anchor came from: rv_model, rv_images or fixed


def reported_anchor_check(raw: RawSubject, data: DataConfig, report: dict) -> tuple[int, int, int]:
    """(mid slices with a labelled RV insertion, those where predict found the RV on the slice itself,
    those of them within ``RV_DEG`` of the labels'), on the crop predict made (rebuilt the same way:
    the centre and width found without labels; a crop the check grew is not rebuilt, so it counts 0)."""
    anchor = report.get("aha_anchor") or {}
    if report.get("localisation", {}).get("crop_grown"):
        return 0, 0, 0
    sub = preprocess.preprocess_subject(unlabelled(raw), data, found=preprocess.locate(raw))
    lab = ed_labels_on(raw, sub)
    myo = np.isin(lab, MYO_CODES)
    truth = aha.anchor_from_labels(lab == RV_CODE, myo, sub.affine, float(sub.spacing[0]))
    mids = [k for k, level in enumerate(metrics.level_of_slices(myo)) if level == "mid" and truth.found[k]]
    angles = anchor.get("anterior_insertion_deg") or []
    on_slice = anchor.get("found_on_slice") or []
    found = [k for k in mids if k < len(on_slice) and on_slice[k] and angles[k] is not None]
    within = sum(aha.angle_error_deg(float(truth.angles_deg[k]), float(angles[k])) <= RV_DEG for k in found)
    return len(mids), len(found), within


def score(raw: RawSubject, subject_out: Path, data: DataConfig) -> Row:
    """The predicted myocardium against the labelled one at ED, and what the report says about it."""
    report = json.loads((subject_out / "report.json").read_text())
    predicted = np.asarray(nib.load(str(subject_out / "infarct_seg.nii.gz")).dataobj) > 0
    assert raw.cine_label is not None
    truth = np.isin(raw.cine_label[..., raw.ed], MYO_CODES)
    loc = report.get("localisation", {})
    mids, found, within = reported_anchor_check(raw, data, report)
    return Row(subject=raw.id, myo_dice=round(float(metrics.dice(predicted, truth)), 4), crop_mm=loc.get("crop_mm"),
               crop_grown=loc.get("crop_grown"), method=loc.get("method"),
               verdict=report.get("trust", {}).get("verdict"),
               implausible=report.get("confidence", {}).get("plausibility", {}).get("implausible"),
               infarct_percent=report.get("infarct_percent"), rv_mid_slices=mids, rv_found=found, rv_within=within,
               anchor=(report.get("aha_anchor") or {}).get("method"))


def run_subject(raw: RawSubject, run_dir: Path, out: Path, data: DataConfig) -> Row:
    """``predict`` on the subject's cine file, as the adapter found it (kept when its report is already
    there: the benchmark resumes)."""
    assert raw.cine_path is not None  # the ACDC and M&Ms adapters record it
    dest = out / raw.id
    done = sorted(dest.glob("*/report.json"))
    if not done:
        code = run_main(predict.main, ["--cine", str(raw.cine_path), "--out", str(dest), "--run-dir", str(run_dir),
                                       "--ed", str(raw.ed)])
        if code != 0:
            raise SystemExit(f"{raw.id}: predict exited {code}")
        done = sorted(dest.glob("*/report.json"))
    return score(raw, done[0].parent, data)


def pooled(rows: list[Row]) -> dict:
    values = [r.myo_dice for r in rows]
    return {"subjects": len(rows), "myo_dice_mean": float(np.mean(values)), "myo_dice_sd": float(np.std(values)),
            "myo_dice_median": float(np.median(values)), "myo_dice_min": float(np.min(values)),
            "crops_grown": sum(bool(r.crop_grown) for r in rows), "implausible": sum(bool(r.implausible) for r in rows),
            "rv_mid_slices": sum(r.rv_mid_slices for r in rows), "rv_found": sum(r.rv_found for r in rows),
            "rv_within": sum(r.rv_within for r in rows),
            "anchors": {m: sum(r.anchor == m for r in rows) for m in sorted({str(r.anchor) for r in rows})},
            "verdicts": {v: sum(r.verdict == v for r in rows) for v in sorted({str(r.verdict) for r in rows})}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_predict", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--format", default="auto", choices=("auto", "acdc", "mnms"))
    p.add_argument("--subjects", nargs="*", help="these subjects only (default: every subject in FOLDER)")
    p.add_argument("--out", type=Path, help="where predict writes (default: RUN/real_predict/<FOLDER name>)")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    fmt = guess_format(a.folder) if a.format == "auto" else a.format
    out = a.out or a.run_dir / "real_predict" / a.folder.name
    data = run_config(a.run_dir / "checkpoints").data  # the crop predict makes follows the model's config
    rows = []
    for sid in a.subjects or adapters.list_subjects(fmt, a.folder):
        raw = adapters.load_subject(fmt, a.folder, sid)
        rows.append(run_subject(raw, a.run_dir, out, data))
        r = rows[-1]
        print(f"{r.subject:<12} myo Dice {r.myo_dice:.3f}  crop {r.crop_mm} mm  grown {r.crop_grown}  {r.method}  "
              f"RV {r.rv_within}/{r.rv_found}/{r.rv_mid_slices} ({r.anchor})  "
              f"{r.verdict}{' (implausible)' if r.implausible else ''}", flush=True)
    summary = pooled(rows)
    print(f"pooled: {summary['subjects']} subjects; myocardium Dice {summary['myo_dice_mean']:.3f} ± "
          f"{summary['myo_dice_sd']:.3f} (median {summary['myo_dice_median']:.3f}, min {summary['myo_dice_min']:.3f}); "
          f"crops grown {summary['crops_grown']}; implausible {summary['implausible']}; verdicts {summary['verdicts']}; "
          f"{summary['rv_mid_slices']} mid slices: RV found {summary['rv_found']}, within {RV_DEG:g} deg "
          f"{summary['rv_within']} (anchors {summary['anchors']})")
    if a.json:
        a.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "pooled": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
