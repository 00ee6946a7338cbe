"""What the adapters share: safe subject ids, label remapping, sparse (ED/ES-only) label frames."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mi_pipeline.data.nifti import _affine, _data, _open, _squeeze_to
from mi_pipeline.errors import InputError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def subject_dirs(root: Path, pattern: str, what: str) -> list[str]:
    """Sorted names of sub-folders of ``root`` matching regex ``pattern``; InputError when none."""
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    rx = re.compile(pattern)
    ids = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith(".") and rx.fullmatch(e.name))
    if not ids:
        raise InputError(f"{root}: no {what} folders found")
    return ids


def load_codes(path: Path, *, shape: tuple[int, ...], affine: np.ndarray, allowed: int, image_name: str) -> np.ndarray:
    """An integer label map in a dataset's own codes 0..``allowed`` on the given grid (not yet mapped)."""
    img = _open(path)
    got = _squeeze_to(path, tuple(img.shape), len(shape), "label map")
    if got != tuple(shape):
        raise InputError(f"{path}: label shape {got} does not match {image_name} shape {tuple(shape)}")
    if not np.allclose(_affine(path, img), affine, atol=1e-3, rtol=1e-4):
        raise InputError(f"{path}: label affine differs from {image_name}'s (labels must be on the same grid)")
    data = np.asarray(_data(path, img, got, None), dtype=np.float64)
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise InputError(f"{path}: label map has NaN or non-integer values")
    lo, hi = int(data.min()), int(data.max())
    if lo < 0 or hi > allowed:
        raise InputError(f"{path}: label values outside 0..{allowed}")
    return data.astype(np.uint8)


def remap(labels: np.ndarray, mapping: dict[int, int], path: Path) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    out = lut[labels]
    if not np.isin(out, (2, 3, 4)).any():
        raise InputError(f"{path}: label map has no myocardium")
    return out


def fill_frames(labelled: dict[int, np.ndarray], frames: int) -> np.ndarray:
    """4D labels (X, Y, Z, T) from a few annotated frames: each frame takes the cyclically nearest
    annotated frame's labels (only the annotated frames are truth; the rest only bound regions)."""
    keys = sorted(labelled)
    first = labelled[keys[0]]
    out = np.zeros(first.shape + (frames,), dtype=np.uint8)
    for t in range(frames):
        nearest = min(keys, key=lambda k: (min((t - k) % frames, (k - t) % frames), k))
        out[..., t] = labelled[nearest]
    return out
