"""M&Ms-1 (multi-centre, multi-vendor) layout, for the motion stage::

    <root>/<ID>/<ID>_sa.nii.gz      cine, X x Y x slices x frames
                <ID>_sa_gt.nii.gz   4D labels, non-empty at ED and ES only: 1 LV cavity, 2 MYO, 3 RV

(the reverse of ACDC's codes). ED is the annotated frame with the larger LV cavity, ES the other;
``<root>/*.csv`` with the dataset's "External code", "ED", "ES" columns (0-based, as distributed)
overrides that. No LGE: motion only.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mi_pipeline.data.adapters.common import (
    fill_frames,
    load_codes,
    remap,
    subject_dirs,
)
from mi_pipeline.data.generic import RawSubject, inside_root
from mi_pipeline.data.nifti import load_image
from mi_pipeline.errors import InputError

LABELS = {0: 0, 1: 1, 2: 2, 3: 5}  # M&Ms 1 LV, 2 MYO, 3 RV -> ours (RV kept as 5: anchors the AHA segments)


def list_subjects(root: Path) -> list[str]:
    ids = subject_dirs(root, r"[A-Za-z0-9][A-Za-z0-9_-]*", "M&Ms subject")
    return [s for s in ids if (root / s / f"{s}_sa.nii.gz").is_file()] or ids


def _csv_frames(root: Path, subject: str) -> tuple[int, int] | None:
    for path in sorted(root.glob("*.csv")):
        try:
            with open(path, newline="", encoding="utf-8", errors="replace") as handle:
                for row in csv.DictReader(handle):
                    row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                    if row.get("External code") == subject and row.get("ED") and row.get("ES"):
                        return int(row["ED"]), int(row["ES"])
        except (OSError, ValueError, csv.Error):
            continue
    return None


def load_subject(root: Path, subject: str) -> RawSubject:
    folder = root / subject
    cine_path, gt_path = folder / f"{subject}_sa.nii.gz", folder / f"{subject}_sa_gt.nii.gz"
    inside_root(root, folder, cine_path, gt_path)
    cine, affine = load_image(cine_path, ndim=4, what="M&Ms cine (X x Y x slices x frames)", min_frames=2)
    codes = load_codes(gt_path, shape=cine.shape, affine=affine, allowed=3, image_name=cine_path.name)
    nt = cine.shape[3]
    annotated = [t for t in range(nt) if np.isin(codes[..., t], (1, 2)).any()]
    frames = _csv_frames(root, subject)
    if frames is not None:
        ed, es = frames
        if not (0 <= ed < nt and 0 <= es < nt) or ed == es or ed not in annotated or es not in annotated:
            raise InputError(f"{root}: ED/ES of {subject} in the CSV ({ed}, {es}) are not two annotated frames "
                             f"of {gt_path.name} (annotated: {annotated})")
    else:
        if len(annotated) < 2:
            raise InputError(f"{gt_path}: needs labels at two frames (ED and ES), found {len(annotated)}")
        cavity = {t: int((codes[..., t] == 1).sum()) for t in annotated}
        ed = max(annotated, key=lambda t: cavity[t])
        es = min(annotated, key=lambda t: cavity[t])
    labelled = {t: remap(codes[..., t], LABELS, gt_path) for t in (ed, es)}
    raw = RawSubject(id=subject, folder=folder, cine=cine, cine_affine=affine, lge=None, lge_affine=None,
                     lge_label=None, ed=ed, es=es, cine_label=fill_frames(labelled, nt))
    raw.cine_path = cine_path
    return raw
