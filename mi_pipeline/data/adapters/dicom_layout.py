"""DICOM dataset layout (``data.format: dicom``): images as the scanner sent them, labels as NIfTI::

    <root>/<subject>/cine/            DICOM short-axis cine: one series, or one series per slice
                     lge/             DICOM LGE short-axis stack (one image per slice position)
                     lge_label.nii.gz labels on the LGE grid: 0 bg, 1 LV cavity, 2 myo, 3 infarct, 4 no-reflow
                     cine_label.nii.gz  optional: true labels on the cine grid, 4D (evaluation truth)
                     info.yaml        optional: ed: / es: (0-based, in trigger-time order); without ed:,
                                      ED is the frame with the smallest TriggerTime (recorded in ed_method)

Why NIfTI labels on DICOM images: annotation tools export NIfTI, and their voxel order need not be the
reader's (dcm2niix and others may flip or swap axes). A label file is accepted when its voxel centres
are the image's in world space in any axis order or direction, and is reordered onto the image grid;
anything else (another grid, another resolution) is an error naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mi_pipeline.data import dicom, nifti
from mi_pipeline.data.adapters.common import subject_dirs
from mi_pipeline.data.generic import RawSubject, check_overlap, inside_root, read_info
from mi_pipeline.errors import InputError


def list_subjects(root: Path) -> list[str]:
    ids = subject_dirs(root, r"[A-Za-z0-9][A-Za-z0-9._-]*", "subject (with a cine/ DICOM folder)")
    kept = [s for s in ids if dicom.holds_dicom(root / s / "cine")]
    if not kept:
        raise InputError(f"{root}: no subject folder holds DICOM files in cine/ (layout <root>/<subject>/cine/)")
    return kept


def _on_grid(path: Path, labels: np.ndarray, lab_affine: np.ndarray, shape: tuple[int, ...],
             affine: np.ndarray, image: str) -> np.ndarray:
    """``labels`` (X, Y, Z[, T]) reordered onto the image grid when both grids share their voxel centres."""
    m = np.linalg.solve(lab_affine, affine)  # image voxel -> label voxel
    lin, shift = m[:3, :3], m[:3, 3]
    perm = np.round(lin)
    if (not np.allclose(lin, perm, atol=1e-3) or not np.allclose(shift, np.round(shift), atol=1e-3)
            or sorted(np.abs(perm).sum(axis=0).tolist()) != [1.0, 1.0, 1.0]
            or sorted(np.abs(perm).sum(axis=1).tolist()) != [1.0, 1.0, 1.0]):
        raise InputError(f"{path}: label grid is not the {image} grid (same voxel centres in world space required; "
                         "resample the labels onto the image)")
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape[:3]), indexing="ij"), -1).reshape(-1, 3)
    src = np.round(ijk @ perm.T + shift).astype(int)
    if (src < 0).any() or (src >= np.asarray(labels.shape[:3])).any():
        raise InputError(f"{path}: label grid covers another field of view than the {image} "
                         f"({labels.shape[:3]} vs {tuple(shape[:3])} voxels)")
    out = labels[src[:, 0], src[:, 1], src[:, 2]]
    return out.reshape(tuple(shape[:3]) + labels.shape[3:])


def _load_label_file(path: Path, shape: tuple[int, ...], affine: np.ndarray, image: str) -> np.ndarray:
    img = nifti._open(path)
    got = nifti._squeeze_to(path, tuple(img.shape), len(shape), "label map")
    labels, lab_affine = nifti.load_label(path, shape=got)
    if labels.shape[3:] != tuple(shape[3:]):
        raise InputError(f"{path}: {labels.shape[3:]} label frames, the {image} has {tuple(shape[3:])}")
    return _on_grid(path, labels, lab_affine, shape, affine, image)


def load_subject(root: Path, subject: str) -> RawSubject:
    folder = root / subject
    cine_dir, lge_dir, label_path = folder / "cine", folder / "lge", folder / "lge_label.nii.gz"
    inside_root(root, folder, cine_dir, lge_dir, label_path, folder / "cine_label.nii.gz", folder / "info.yaml")
    cine = dicom.read_stack(cine_dir, what="cine", min_phases=2)
    if not dicom.holds_dicom(lge_dir):
        raise InputError(f"{lge_dir}: missing or holds no DICOM files (subject {subject} needs its LGE stack there)")
    if not label_path.is_file():
        raise InputError(f"{label_path}: missing (labels on the LGE grid)")
    lge = dicom.read_stack(lge_dir, what="LGE", min_phases=1, max_phases=1)
    lge_img = lge.array[..., 0]
    lge_label = _load_label_file(label_path, lge_img.shape, lge.affine, "LGE")
    cine_label = None
    if (folder / "cine_label.nii.gz").is_file():
        cine_label = _load_label_file(folder / "cine_label.nii.gz", cine.array.shape, cine.affine, "cine")
    ed, es, truth = read_info(folder / "info.yaml", cine.array.shape[3])
    check_overlap(lge_dir, lge_img.shape, lge.affine, cine.array.shape[:3], cine.affine)
    raw = RawSubject(id=subject, folder=folder, cine=cine.array, cine_affine=cine.affine, lge=lge_img,
                     lge_affine=lge.affine, lge_label=lge_label, ed=ed, es=es, cine_label=cine_label, truth=truth)
    raw.cine_path, raw.lge_path, raw.lge_label_path = cine_dir, lge_dir, label_path
    if not _info_gives_ed(folder / "info.yaml") and len(set(cine.trigger_times_ms)) > 1:
        raw.ed = int(np.argmin(cine.trigger_times_ms))  # the R-wave trigger: end-diastole
        raw.ed_method = f"DICOM TriggerTime (smallest: {cine.trigger_times_ms[raw.ed]:g} ms)"
    return raw


def _info_gives_ed(path: Path) -> bool:
    """Whether ``info.yaml`` names the ED frame (already validated by ``read_info``)."""
    import yaml

    if not path.is_file():
        return False
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return isinstance(data, dict) and data.get("ed") is not None
