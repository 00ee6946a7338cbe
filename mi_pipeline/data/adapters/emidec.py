"""EMIDEC (LGE infarct challenge) layout, the LGE side::

    <root>/Case_P001/Images/Case_P001.nii.gz     LGE, 3D short-axis stack
                     Contours/Case_P001.nii.gz   0 bg, 1 LV cavity, 2 myocardium, 3 infarct, 4 no-reflow

(the codes are ours; infarct = 3 + 4). EMIDEC ships no cine, and this pipeline's subjects live on
the cine grid, so a subject enters it only with the same patient's cine beside it:
``Case_P001/Cine/Case_P001.nii.gz`` or ``Case_P001/cine.nii.gz`` (4D, same scanner coordinates).
``load_lge`` reads the LGE side alone (e.g. for checking a site's export).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mi_pipeline.data.generic import RawSubject, check_overlap, inside_root
from mi_pipeline.data.nifti import load_image, load_label
from mi_pipeline.errors import InputError


def list_subjects(root: Path) -> list[str]:
    from mi_pipeline.data.adapters.common import subject_dirs

    return subject_dirs(root, r"Case_[A-Za-z0-9]+", "EMIDEC Case_*")


def load_lge(root: Path, subject: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, Path, Path]:
    """(LGE, its affine, labels 0..4, image path, label path) of one case."""
    folder = root / subject
    image_path = folder / "Images" / f"{subject}.nii.gz"
    label_path = folder / "Contours" / f"{subject}.nii.gz"
    inside_root(root, folder, image_path, label_path)
    lge, affine = load_image(image_path, ndim=3, what="EMIDEC LGE")
    labels, _ = load_label(label_path, shape=lge.shape, affine=affine, image_name=image_path.name)
    return lge, affine, labels, image_path, label_path


def load_subject(root: Path, subject: str) -> RawSubject:
    folder = root / subject
    lge, lge_affine, labels, image_path, label_path = load_lge(root, subject)
    cine_path = next((p for p in (folder / "Cine" / f"{subject}.nii.gz", folder / "cine.nii.gz") if p.is_file()), None)
    if cine_path is None:
        raise InputError(f"{folder}: EMIDEC provides LGE only; the pipeline is built on the cine grid, so add the "
                         f"patient's cine as {folder / 'Cine' / (subject + '.nii.gz')} (4D, same scanner coordinates)")
    inside_root(root, cine_path)
    cine, cine_affine = load_image(cine_path, ndim=4, what="cine (X x Y x slices x frames)", min_frames=2)
    check_overlap(image_path, lge.shape, lge_affine, cine.shape[:3], cine_affine)
    raw = RawSubject(id=subject, folder=folder, cine=cine, cine_affine=cine_affine, lge=lge, lge_affine=lge_affine,
                     lge_label=labels)
    raw.cine_path, raw.lge_path, raw.lge_label_path = cine_path, image_path, label_path
    return raw
