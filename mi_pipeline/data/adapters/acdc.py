"""ACDC (Automated Cardiac Diagnosis Challenge) layout, for the motion stage::

    <root>/patient001/patient001_4d.nii.gz          cine, X x Y x slices x frames
                      Info.cfg                       "ED: 1", "ES: 12", "Group: DCM", ... (1-based frames)
                      patient001_frame01_gt.nii.gz   labels at ED: 1 RV, 2 MYO, 3 LV cavity
                      patient001_frame12_gt.nii.gz   labels at ES

Labels are mapped to our codes (LV cavity 1, myocardium 2, RV 5: kept so AHA segments can be anchored
to the RV insertion points). ACDC has no LGE, so
only the motion stage can use it; the frames between ED and ES carry the nearest annotated frame's
labels (the scores use ED and ES only).
"""

from __future__ import annotations

from pathlib import Path

from mi_pipeline.data.adapters.common import (
    fill_frames,
    load_codes,
    remap,
    subject_dirs,
)
from mi_pipeline.data.generic import RawSubject, inside_root
from mi_pipeline.data.nifti import load_image
from mi_pipeline.errors import InputError

LABELS = {0: 0, 1: 5, 2: 2, 3: 1}  # ACDC 1 RV, 2 MYO, 3 LV -> ours (RV kept as 5: anchors the AHA segments)


def list_subjects(root: Path) -> list[str]:
    return subject_dirs(root, r"patient\d+", "ACDC patientXXX")


def read_info(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise InputError(f"{path}: missing (ACDC subjects need Info.cfg with ED and ES)")
    info = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _frame(info: dict[str, str], key: str, path: Path, frames: int) -> int:
    try:
        value = int(float(info[key]))
    except (KeyError, ValueError):
        raise InputError(f"{path}: {key}: missing or not a frame number") from None
    if not 1 <= value <= frames:
        raise InputError(f"{path}: {key}: {value} out of range 1..{frames} (ACDC frames are 1-based)")
    return value - 1


def load_subject(root: Path, subject: str) -> RawSubject:
    folder = root / subject
    cine_path = folder / f"{subject}_4d.nii.gz"
    inside_root(root, folder, cine_path, folder / "Info.cfg", *folder.glob(f"{subject}_frame*_gt.nii.gz"))
    cine, affine = load_image(cine_path, ndim=4, what="ACDC cine (X x Y x slices x frames)", min_frames=2)
    info_path = folder / "Info.cfg"
    info = read_info(info_path)
    nt = cine.shape[3]
    ed, es = _frame(info, "ED", info_path, nt), _frame(info, "ES", info_path, nt)
    if ed == es:
        raise InputError(f"{info_path}: ED and ES are the same frame ({ed + 1})")
    labelled = {}
    for t in (ed, es):
        path = folder / f"{subject}_frame{t + 1:02d}_gt.nii.gz"
        if not path.is_file():
            raise InputError(f"{path}: missing (ACDC labels of frame {t + 1})")
        codes = load_codes(path, shape=cine.shape[:3], affine=affine, allowed=3, image_name=cine_path.name)
        labelled[t] = remap(codes, LABELS, path)
    raw = RawSubject(id=subject, folder=folder, cine=cine, cine_affine=affine, lge=None, lge_affine=None,
                     lge_label=None, ed=ed, es=es, cine_label=fill_frames(labelled, nt),
                     truth={"group": info.get("Group")})
    raw.cine_path = cine_path
    return raw
