"""The generic dataset layout, what a site puts its own data into::

    <root>/<subject>/cine.nii.gz        4D X x Y x slices x frames
                     lge.nii.gz         3D, its own grid
                     lge_label.nii.gz   on the LGE grid: 0 bg, 1 LV cavity, 2 myo, 3 infarct, 4 no-reflow
                     info.yaml          optional: ed: / es: (0-based frame indices)
                     cine_label.nii.gz  optional (the phantom writes it): true labels on the cine grid, 4D,
                                        the same codes and 5 RV blood pool (optional)

Subject ids become cache file names, so they must be plain names; hidden entries are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mi_pipeline.data.nifti import load_image, load_label
from mi_pipeline.errors import InputError

REQUIRED = ("cine.nii.gz", "lge.nii.gz", "lge_label.nii.gz")
INFO_KEYS = {"ed", "es", "truth"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class RawSubject:
    """One subject as read from disk, validated; arrays in NIfTI voxel order.

    Cine-only data (ACDC, M&Ms, a cine given to ``predict``) has no LGE: ``lge``, ``lge_affine`` and
    ``lge_label`` are None. The ``*_path`` fields name the files error messages should point at when
    they are not the generic layout's ``<folder>/cine.nii.gz`` / ``lge.nii.gz``.
    """

    id: str
    folder: Path
    cine: np.ndarray  # float32 (X, Y, Z, T)
    cine_affine: np.ndarray
    lge: np.ndarray | None  # float32 (X', Y', Z')
    lge_affine: np.ndarray | None
    lge_label: np.ndarray | None  # uint8 (X', Y', Z'), 0..4
    ed: int = 0
    es: int | None = None
    cine_label: np.ndarray | None = None  # uint8 (X, Y, Z, T)
    truth: dict[str, Any] = field(default_factory=dict)
    cine_path: Path | None = None
    lge_path: Path | None = None
    lge_label_path: Path | None = None
    ed_method: str = "given"  # or how ED was found from the images (predict)
    dicom_stack: Any = None  # data.dicom.DicomStack when the cine was read from DICOM (predict's SEG output)


def list_subjects(root: str | Path) -> list[str]:
    """Sorted subject folder names under ``root``; errors for an empty, missing or unsafe dataset."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    ids: list[str] = []
    seen: dict[str, str] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if not _SAFE_ID.match(entry.name):
            raise InputError(f"{entry}: unsafe subject folder name (use letters, digits, '.', '_' or '-')")
        key = entry.name.lower()
        if key in seen:
            raise InputError(f"{entry}: duplicate subject id (clashes with {root / seen[key]} ignoring case)")
        seen[key] = entry.name
        ids.append(entry.name)
    if not ids:
        raise InputError(f"{root}: dataset folder has no subject folders (expected <root>/<subject>/cine.nii.gz)")
    return ids


def read_info(path: Path, frames: int) -> tuple[int, int | None, dict[str, Any]]:
    """``ed``/``es`` (0-based, < frames) from ``info.yaml``; absent file -> (0, None)."""
    if not path.exists():
        return 0, None, {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: must be a mapping with ed: and es:, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in INFO_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)} (known: ed, es, truth)")
    values: dict[str, int | None] = {}
    for key in ("ed", "es"):
        value = raw.get(key)
        if value is None:
            values[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{path}: {key} must be an integer frame index, got {value!r}")
        if not 0 <= value < frames:
            raise InputError(f"{path}: {key}={value} out of range for a cine with {frames} frames (0-based)")
        values[key] = value
    ed = values["ed"] if values["ed"] is not None else 0
    if values["es"] is not None and values["es"] == ed:
        raise InputError(f"{path}: es equals ed ({ed}); they must be different frames")
    truth = raw.get("truth") or {}
    return ed, values["es"], truth if isinstance(truth, dict) else {}


def load_subject(root: str | Path, subject: str) -> RawSubject:
    """Read and validate every file of one subject (raises ``InputError`` naming the file)."""
    folder = Path(root) / subject
    missing = [name for name in REQUIRED if not (folder / name).exists()]
    if missing:
        raise InputError(f"{folder / missing[0]}: missing (subject {subject} needs {', '.join(REQUIRED)})")
    for name in (*REQUIRED, "cine_label.nii.gz", "info.yaml"):
        inside_root(Path(root), folder / name)
    cine, cine_affine = load_image(folder / "cine.nii.gz", ndim=4, what="cine (X x Y x slices x frames)", min_frames=2)
    lge, lge_affine = load_image(folder / "lge.nii.gz", ndim=3, what="LGE")
    lge_label, _ = load_label(folder / "lge_label.nii.gz", shape=lge.shape, affine=lge_affine, image_name="lge.nii.gz")
    cine_label = None
    if (folder / "cine_label.nii.gz").exists():
        cine_label, _ = load_label(folder / "cine_label.nii.gz", shape=cine.shape, affine=cine_affine,
                                   image_name="cine.nii.gz", rv=True)
    ed, es, truth = read_info(folder / "info.yaml", cine.shape[3])
    check_overlap(folder / "lge.nii.gz", lge.shape, lge_affine, cine.shape[:3], cine_affine)
    return RawSubject(id=subject, folder=folder, cine=cine, cine_affine=cine_affine, lge=lge, lge_affine=lge_affine,
                      lge_label=lge_label, ed=ed, es=es, cine_label=cine_label, truth=truth)


def inside_root(root: Path, *paths: Path) -> None:
    """Refuse files or folders that resolve (e.g. through a symbolic link) outside the dataset root.

    Everything read must be under ``data.root`` (as manifest paths must), so a planted link cannot
    pull in files from elsewhere.
    """
    base = Path(root).resolve()
    for path in paths:
        if not path.exists() and not path.is_symlink():
            continue
        target = path.resolve()
        if not target.is_relative_to(base):
            raise InputError(f"{path}: leaves the dataset root {root} (resolves to {target}); "
                             "copy the file into the dataset or set data.root to where it really is")


def check_overlap(path: Path, shape: tuple[int, ...], affine: np.ndarray, cine_shape: tuple[int, ...],
                  cine_affine: np.ndarray) -> None:
    """The LGE may have its own grid, but its field of view must overlap the cine's in world space."""
    ii, jj, kk = (np.linspace(0, n - 1, min(n, 9)) for n in cine_shape[:3])
    grid = np.stack(np.meshgrid(ii, jj, kk, indexing="ij"), -1).reshape(-1, 3)
    world = grid @ cine_affine[:3, :3].T + cine_affine[:3, 3]
    vox = (world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    inside = np.all((vox > -0.5) & (vox < np.asarray(shape[:3]) - 0.5), axis=1)
    if not inside.any():
        raise InputError(f"{path}: field of view does not overlap the cine's in world coordinates (check the affines)")
