"""The only module that reads NIfTI: load, check, and turn every problem into one clear line.

Why: users' data fails in many ways (truncated uploads, 3D where 4D is expected, NaN after a
conversion, a label file from another subject). Each becomes an ``InputError`` naming the file and
the problem, never a traceback from nibabel, gzip or zlib.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from mi_pipeline.data.cache import RV_CODE
from mi_pipeline.errors import InputError

MAX_AXIS = 2048
MAX_VOXELS = 500_000_000
MAX_LABEL = 4
LABEL_NAMES = "0 bg, 1 LV cavity, 2 myo, 3 infarct, 4 no-reflow"
_READ_ERRORS = (ImageFileError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError, TypeError)


def _open(path: Path) -> nib.Nifti1Image:
    """Open the header (cheap) with readable errors; data is read later."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: cannot read file (permission denied)")
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({_short(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI image (got {type(img).__name__})")
    return img


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _check_shape(path: Path, shape: tuple[int, ...]) -> None:
    if any(n < 1 for n in shape):
        raise InputError(f"{path}: empty image, shape {shape}")
    if any(n > MAX_AXIS for n in shape) or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(f"{path}: absurd dimensions {shape} (limit {MAX_AXIS} per axis, {MAX_VOXELS:.0e} voxels)")


def _squeeze_to(path: Path, shape: tuple[int, ...], ndim: int, what: str) -> tuple[int, ...]:
    """Drop trailing singleton axes beyond ``ndim`` (common in converted files); demand exactly ``ndim``."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > ndim and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != ndim:
        raise InputError(f"{path}: {what} must be {ndim}D, got {len(shape)}D shape {shape}")
    return shape


class SpacingWarning(UserWarning):
    """A file whose affine and header voxel sizes disagree (read with the header's; see ``_affine``)."""


def _header_spacing(affine: np.ndarray, img: nib.Nifti1Image) -> np.ndarray:
    """``affine`` with its voxel sizes taken from the header's pixdim when the two disagree.

    Why: some public datasets (ACDC's NIfTI files) carry an sform with unit-length axes while pixdim
    holds the true voxel size; ITK, and so SimpleITK and nnU-Net, read spacing from pixdim. Trusting
    the sform there would make every voxel 1 mm: crops, volumes and millilitres all wrong.
    """
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    lin = affine[:3, :3]
    norms = np.linalg.norm(lin, axis=0)
    if zooms.size < 3 or not np.all(np.isfinite(zooms)) or np.any(zooms <= 0) or np.any(norms <= 0):
        return affine
    if np.allclose(norms, zooms, rtol=0.01):
        return affine
    fixed = affine.copy()
    fixed[:3, :3] = lin / norms * zooms
    warnings.warn(f"{img.get_filename()}: the affine's voxel sizes {np.round(norms, 4).tolist()} mm disagree with the "
                  f"header's pixdim {np.round(zooms, 4).tolist()} mm; using pixdim (as ITK does) with the affine's "
                  "orientation", SpacingWarning, stacklevel=2)
    return fixed


def _affine(path: Path, img: nib.Nifti1Image) -> np.ndarray:
    affine = np.asarray(img.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: affine has non-finite values")
    affine = _header_spacing(affine, img)
    lin = affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing < 1e-6) or abs(np.linalg.det(lin)) < 1e-9 * max(float(np.prod(spacing)), 1e-30):
        raise InputError(f"{path}: affine is singular (voxel spacing {np.round(spacing, 4).tolist()})")
    if np.linalg.cond(lin / spacing) > 1e3:
        raise InputError(f"{path}: affine is degenerate (voxel axes nearly parallel)")
    return affine


def _data(path: Path, img: nib.Nifti1Image, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    try:
        data = np.asanyarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: cannot read voxel data, file truncated or corrupt ({_short(exc)})") from None
    except MemoryError:
        raise InputError(f"{path}: not enough memory to read shape {tuple(img.shape)}") from None
    return np.asarray(data.reshape(shape), dtype=dtype) if dtype is not None else data.reshape(shape)


def load_image(path: str | os.PathLike[str], *, ndim: int, what: str = "image",
               min_frames: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A float32 image of exactly ``ndim`` dimensions and its voxel->world affine.

    ``min_frames`` (4D only) rejects a cine with too few frames along the last axis.
    """
    path = Path(path)
    img = _open(path)
    shape = _squeeze_to(path, tuple(img.shape), ndim, what)
    _check_shape(path, shape)
    if min_frames and shape[-1] < min_frames:
        raise InputError(f"{path}: {what} has {shape[-1]} frame(s) along axis {ndim - 1}; need at least {min_frames}")
    affine = _affine(path, img)
    data = _data(path, img, shape, np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        raise InputError(f"{path}: {int((~finite).sum())} voxel(s) are NaN or Inf")
    if float(data.max()) == float(data.min()):
        raise InputError(f"{path}: image is constant (every voxel = {float(data.min()):g})")
    return data, affine


def load_label(path: str | os.PathLike[str], *, shape: tuple[int, ...], affine: np.ndarray | None = None,
               image_name: str = "its image", rv: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 label map 0..4 (0..5 with ``rv``: a cine's labels may mark the RV) with the given ``shape``
    (and ``affine``, when given) and some myocardium."""
    top, names = (RV_CODE, f"{LABEL_NAMES}, {RV_CODE} RV") if rv else (MAX_LABEL, LABEL_NAMES)
    path = Path(path)
    img = _open(path)
    got = _squeeze_to(path, tuple(img.shape), len(shape), "label map")
    if got != tuple(shape):
        raise InputError(f"{path}: label shape {got} does not match {image_name} shape {tuple(shape)}")
    lab_affine = _affine(path, img)
    if affine is not None and not np.allclose(lab_affine, affine, atol=1e-3, rtol=1e-4):
        raise InputError(f"{path}: label affine differs from {image_name}'s (labels must be on the same grid)")
    data = _data(path, img, got, None)
    if not np.issubdtype(data.dtype, np.integer):
        data = np.asarray(data, dtype=np.float64)
        if not np.all(np.isfinite(data)):
            raise InputError(f"{path}: label map has NaN or Inf voxels")
        if not np.array_equal(data, np.round(data)):
            raise InputError(f"{path}: label map has non-integer values (expected codes 0..{top})")
    lo, hi = int(data.min()), int(data.max())
    if lo < 0 or hi > top:
        bad = sorted({int(v) for v in np.unique(data) if v < 0 or v > top})[:5]
        raise InputError(f"{path}: label values {bad} outside 0..{top} ({names})")
    labels = data.astype(np.uint8)
    if not np.isin(labels, (2, 3, 4)).any():
        raise InputError(f"{path}: label map has no myocardium (no voxel labelled 2, 3 or 4)")
    return labels, lab_affine
