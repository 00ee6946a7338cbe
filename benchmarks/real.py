"""Real-data benchmark: label-free localisation, crop and RV anchor checked against expert labels.

    python -m benchmarks.real FOLDER [--format acdc|mnms|auto] [--json FILE]

FOLDER is a dataset in one of the layouts the adapters read (ACDC, M&Ms); the subjects' expert
labels (LV cavity, myocardium, RV at ED and ES) are the reference and are never shown to the code
under test (except where ``checked`` says so). Per subject and pooled it reports:

- ``centre_mm``: distance from the label-free LV centre (what ``predict`` uses) to the labels' LV
  centre (cavity + myocardium at ED), in mm;
- ``crop_ok``: whether the crop built around that centre holds the whole labelled myocardium of the
  ED and ES frames (no voxel of it outside, nor on the outermost pixel ring);
- ``checked``: the same after ``predict``'s own check of that crop (``inference.crop_holding_heart``: grown 1.3x,
  at most twice, while the segmented myocardium reaches its outer ring), with the ED labels standing in for
  the segmentation -- a simulation of a model that segments the wall, not a measurement of one;
- ``rv``: on mid-ventricular slices (the middle third of the slices with myocardium) of the crop
  ``predict`` makes (centre and width found without labels), whether the RV insertion was found in the
  ED cine on the slice itself, and the anterior insertion angle's error against the one the RV labels
  give (the labelled myocardium, sampled onto that crop, is the mask both use, so this measures the
  anchoring, not a segmentation model);
- ``ed_err``: frames between the image-based ED and the dataset's ED, when the cine has >= 3 frames.

The data are not part of the repository: see docs/QUALITY.md for where the subjects come from.
Exit status 0 when the targets hold: centre <= 5 mm on >= 90 % of subjects, the crop holds the
myocardium on every subject, RV found on >= 90 % of mid slices and within 20 degrees on >= 90 %.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mi_pipeline import inference, metrics
from mi_pipeline.clinical import aha
from mi_pipeline.config import Config, DataConfig
from mi_pipeline.data import adapters, preprocess
from mi_pipeline.data.cache import RV_CODE, Subject
from mi_pipeline.data.generic import RawSubject

CENTRE_MM, RV_DEG, TARGET = 5.0, 20.0, 0.9
MYO_CODES, LV_CODES = (2, 3, 4), (1, 2, 3, 4)


@dataclass(frozen=True)
class SubjectRow:
    subject: str
    centre_mm: float
    method: str
    crop_mm: float
    crop_ok: bool
    checked_crop_mm: float
    checked_crop_ok: bool
    crop_grown: int
    mid_slices: int
    rv_found: int
    rv_within: int
    rv_errors_deg: tuple[float, ...]
    ed_err: int | None


def guess_format(root: Path) -> str:
    """acdc when the folder holds patientXXX sub-folders, else mnms."""
    return "acdc" if any(p.is_dir() and p.name.startswith("patient") for p in root.iterdir()) else "mnms"


def label_centre(raw: RawSubject) -> tuple[float, float]:
    """The labels' LV centre (cavity + myocardium at ED), cine voxel coordinates along axes 0, 1."""
    mask = np.isin(raw.cine_label[..., raw.ed], LV_CODES)
    ci, cj = np.argwhere(mask)[:, :2].mean(axis=0)
    return float(ci), float(cj)


def unlabelled(raw: RawSubject) -> RawSubject:
    """The same cine with no labels: what predict sees."""
    return RawSubject(id=raw.id, folder=raw.folder, cine=raw.cine, cine_affine=raw.cine_affine, lge=None,
                      lge_affine=None, lge_label=None, ed=raw.ed, cine_path=raw.cine_path)


def myocardium_inside(raw: RawSubject, crop_affine: np.ndarray, crop: int) -> bool:
    """Whether every labelled myocardium voxel (ED and ES) maps strictly inside the crop's outer ring."""
    frames = sorted({raw.ed, raw.es if raw.es is not None else raw.ed})
    idx = np.concatenate([np.argwhere(np.isin(raw.cine_label[..., t], MYO_CODES)) for t in frames])
    world = raw.cine_affine[:3, :3] @ idx.T + raw.cine_affine[:3, 3:4]
    vox = np.linalg.solve(crop_affine[:3, :3], world - crop_affine[:3, 3:4])
    return bool(np.all((vox[:2] >= 1.0) & (vox[:2] <= crop - 2.0)))


def ed_labels_on(raw: RawSubject, subject: Subject) -> np.ndarray:
    """The subject's ED label codes sampled onto a crop grid, (Z, H, W) like the crop's cine."""
    shape = (subject.cine.shape[-2], subject.cine.shape[-1], subject.cine.shape[0])
    label, _ = preprocess.sample(raw.cine_label[..., raw.ed], raw.cine_affine, subject.affine, shape, order=0)
    return label.transpose(2, 0, 1)


def labelled_myocardium(raw: RawSubject) -> Callable[[Subject], inference.Segmented]:
    """A stand-in segmenter for ``predict``'s crop check: the subject's labelled ED myocardium on the crop grid."""
    def segment(subject: Subject) -> inference.Segmented:
        return inference.Segmented(None, np.isin(ed_labels_on(raw, subject), MYO_CODES).astype(np.uint8), None,
                                   None, None)
    return segment


def rv_check(raw: RawSubject, sub: Subject) -> tuple[int, int, list[float]]:
    """(mid slices, RV found on the slice itself, errors in degrees where found) on ``sub``'s crop grid.

    ``sub`` is the crop ``predict`` makes (centre and width found without labels): the anchor is read in
    what a user's run reads it in. The labels are sampled onto that grid for the myocardium both anchors
    use and for the RV that gives the reference."""
    lab = ed_labels_on(raw, sub)
    myo, rv = np.isin(lab, MYO_CODES), lab == RV_CODE
    truth = aha.anchor_from_labels(rv, myo, sub.affine, float(sub.spacing[0]))
    found = aha.anchor_from_images(sub.cine[:, 0], myo, sub.affine, float(sub.spacing[0]),
                                   motion=sub.cine.std(axis=1))
    mids = [k for k, level in enumerate(metrics.level_of_slices(myo)) if level == "mid" and truth.found[k]]
    errors = [aha.angle_error_deg(float(truth.angles_deg[k]), float(found.angles_deg[k]))
              for k in mids if found.found[k]]
    return len(mids), sum(1 for k in mids if found.found[k]), errors


def evaluate(raw: RawSubject, cfg: DataConfig) -> SubjectRow:
    sp = np.linalg.norm(raw.cine_affine[:3, :3], axis=0)
    spacing = (float(sp[0]), float(sp[1]))
    found = preprocess.locate(raw)
    centre, method = found.center, found.method
    want = label_centre(raw)
    error = float(np.hypot((centre[0] - want[0]) * spacing[0], (centre[1] - want[1]) * spacing[1]))
    sub = preprocess.preprocess_subject(unlabelled(raw), cfg, found=found)  # centre and width as predict finds them
    crop_ok = myocardium_inside(raw, sub.affine, sub.cine.shape[2])
    checked = inference.crop_holding_heart(unlabelled(raw), Config(data=cfg), found, labelled_myocardium(raw))
    mids, rv_found, errors = rv_check(raw, sub)
    ed_err = None
    if raw.cine.shape[3] >= 3:
        nt, ed = raw.cine.shape[3], preprocess.estimate_ed(raw.cine, spacing)
        ed_err = int(min((ed - raw.ed) % nt, (raw.ed - ed) % nt))
    return SubjectRow(subject=raw.id, centre_mm=round(error, 2), method=method,
                      crop_mm=round(float(sub.spacing[0]) * sub.cine.shape[2], 1), crop_ok=crop_ok,
                      checked_crop_mm=round(checked.width_mm, 1),
                      checked_crop_ok=myocardium_inside(raw, checked.subject.affine, cfg.crop),
                      crop_grown=checked.grown, mid_slices=mids,
                      rv_found=rv_found, rv_within=sum(1 for e in errors if e <= RV_DEG),
                      rv_errors_deg=tuple(round(e, 1) for e in errors), ed_err=ed_err)


def pooled(rows: list[SubjectRow]) -> dict:
    n, mids = len(rows), sum(r.mid_slices for r in rows)
    return {"subjects": n,
            "centre_within_5mm": sum(r.centre_mm <= CENTRE_MM for r in rows) / max(n, 1),
            "centre_median_mm": float(np.median([r.centre_mm for r in rows])) if rows else None,
            "centre_max_mm": max((r.centre_mm for r in rows), default=None),
            "crop_ok": sum(r.crop_ok for r in rows) / max(n, 1),
            "checked_crop_ok": sum(r.checked_crop_ok for r in rows) / max(n, 1),
            "crops_grown": sum(r.crop_grown > 0 for r in rows),
            "mid_slices": mids,
            "rv_found": sum(r.rv_found for r in rows) / max(mids, 1),
            "rv_within_20deg": sum(r.rv_within for r in rows) / max(mids, 1)}


def meets_targets(summary: dict) -> bool:
    return (summary["centre_within_5mm"] >= TARGET and summary["crop_ok"] == 1.0
            and summary["rv_found"] >= TARGET and summary["rv_within_20deg"] >= TARGET)


def print_table(rows: list[SubjectRow], summary: dict) -> None:
    print(f"{'subject':<12} {'centre mm':>9} {'method':<22} {'crop mm':>7} {'crop ok':>7} {'checked':>11} {'RV found':>9} "
          f"{'RV <=20':>8} {'ED err':>6}")
    for r in rows:
        print(f"{r.subject:<12} {r.centre_mm:>9.1f} {r.method:<22} {r.crop_mm:>7.0f} {r.crop_ok!s:>7} "
              f"{r.checked_crop_mm:>5.0f} {r.checked_crop_ok!s:>5} "
              f"{r.rv_found:>4}/{r.mid_slices:<4} {r.rv_within:>4}/{r.mid_slices:<3} "
              f"{'-' if r.ed_err is None else r.ed_err:>6}")
    print(f"pooled: {summary['subjects']} subjects; centre <= 5 mm {summary['centre_within_5mm']:.0%} "
          f"(median {summary['centre_median_mm']:.1f}, max {summary['centre_max_mm']:.1f} mm); crop holds the "
          f"myocardium {summary['crop_ok']:.0%} (after predict's check with the labels as its segmentation "
          f"{summary['checked_crop_ok']:.0%}, {summary['crops_grown']} grown); {summary['mid_slices']} mid slices: RV found "
          f"{summary['rv_found']:.0%}, within 20 deg {summary['rv_within_20deg']:.0%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--format", default="auto", choices=("auto", "acdc", "mnms"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    fmt = guess_format(args.folder) if args.format == "auto" else args.format
    cfg = DataConfig(format=fmt, root=str(args.folder))
    rows = [evaluate(adapters.load_subject(fmt, args.folder, s), cfg) for s in adapters.list_subjects(fmt, args.folder)]
    summary = pooled(rows)
    print_table(rows, summary)
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "pooled": summary}, indent=1) + "\n")
    return 0 if meets_targets(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
