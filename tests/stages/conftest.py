"""A tiny synthetic cache for the stage tests: beating rings with an akinetic infarct sector.

Each subject: a myocardial ring around a bright blood pool that thickens and contracts towards ES,
except an infarct sector that does not move; the LGE is the ED geometry seen at another
breath-hold (shifted), with LGE contrast (nulled dark myocardium, bright infarct).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mi_pipeline.config import Config, load_config
from mi_pipeline.data.cache import Subject, save_subject, write_manifest, write_splits


def _geometry(size: int, center: tuple[float, float], frame_phase: float, infarct: tuple[float, float] | None,
              r_in: float, r_out: float) -> np.ndarray:
    """Label map (H, W): 0 bg, 1 cavity, 2 myocardium, 3 infarct, at a contraction phase in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - center[0], xx - center[1]
    radius = np.hypot(dy, dx)
    angle = np.degrees(np.arctan2(dy, dx)) % 360.0
    in_sector = np.zeros_like(radius, dtype=bool)
    if infarct is not None:
        start, width = infarct
        in_sector = (angle - start) % 360.0 < width
    # normal wall: cavity shrinks a lot, epicardium a little (= thickening); infarct sector akinetic
    inner = np.where(in_sector, r_in, r_in * (1.0 - 0.35 * frame_phase))
    outer = np.where(in_sector, r_out, r_out * (1.0 - 0.10 * frame_phase))
    labels = np.zeros((size, size), dtype=np.uint8)
    labels[radius < inner] = 1
    wall = (radius >= inner) & (radius < outer)
    labels[wall] = 2
    labels[wall & in_sector] = 3
    return labels


def _rv_pool(size: int, center: tuple[float, float], r_out: float) -> np.ndarray:
    """A disc just outside the ring's epicardium, on its left (columns below the centre's)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    radius = 0.2 * size
    return np.hypot(yy - center[0], xx - (center[1] - r_out - radius + 2.0)) < radius


def _render(labels: np.ndarray, contrast: dict[int, float], rng: np.random.Generator, noise: float) -> np.ndarray:
    image = np.zeros(labels.shape, dtype=np.float64)
    for code, value in contrast.items():
        image[labels == code] = value
    image += rng.normal(0.0, noise, size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


CINE_CONTRAST = {0: 0.15, 1: 0.9, 2: 0.4, 3: 0.4, 5: 0.85}  # 5: the RV's blood
LGE_CONTRAST = {0: 0.25, 1: 0.6, 2: 0.05, 3: 0.95}


def make_subject(subject_id: str, seed: int, *, size: int = 32, slices: int = 2, frames: int = 4,
                 infarct: bool = True, shift: float = 2.0, noise: float = 0.02, rv: bool = False) -> Subject:
    """``rv``: an RV blood pool beside the ring, labelled 5 in the cine labels as ACDC / M&Ms label it."""
    rng = np.random.default_rng(seed)
    center = (size / 2 + rng.uniform(-1.5, 1.5), size / 2 + rng.uniform(-1.5, 1.5))
    es = frames // 2
    cine = np.zeros((slices, frames, size, size), dtype=np.float32)
    cine_label = np.zeros((slices, frames, size, size), dtype=np.uint8)
    lge = np.zeros((slices, size, size), dtype=np.float32)
    lge_label = np.zeros((slices, size, size), dtype=np.uint8)
    angle = rng.uniform(0, 2 * math.pi)
    offset = (center[0] + shift * math.sin(angle), center[1] + shift * math.cos(angle))
    for z in range(slices):
        r_in, r_out = size * (0.16 - 0.02 * z), size * (0.27 - 0.02 * z)
        sector = (float(rng.uniform(0, 360)), 100.0) if infarct else None
        for t in range(frames):
            phase = math.sin(math.pi * t / (2 * es)) if t <= es else math.sin(math.pi * (frames - t) / (2 * (frames - es)))
            cine_label[z, t] = _geometry(size, center, phase, sector, r_in, r_out)
            if rv:
                cine_label[z, t][_rv_pool(size, center, r_out) & (cine_label[z, t] == 0)] = 5
            cine[z, t] = _render(cine_label[z, t], CINE_CONTRAST, rng, noise)
        lge_label[z] = _geometry(size, offset, 0.0, sector, r_in, r_out)
        lge[z] = _render(lge_label[z], LGE_CONTRAST, rng, noise)
    return Subject(id=subject_id, cine=cine, es=es, spacing=(1.6, 1.6, 8.0), affine=np.eye(4),
                   lge=lge, lge_label=lge_label, cine_label=cine_label)


def write_synthetic_cache(run_dir: Path, *, n_train: int = 4, n_val: int = 2, labels: bool = True,
                          lge: bool = True, data_hash: str = "synthetic", **kwargs) -> None:
    """``lge`` False: a cine-only cache (no LGE image or label), as ACDC / M&Ms give; the manifest counts
    LGE and cine-labelled subjects as step 1 does (they count for a config whose data hash is ``data_hash``)."""
    ids = {"train": [f"tr{i}" for i in range(n_train)], "val": [f"va{i}" for i in range(n_val)], "test": []}
    for split, names in ids.items():
        for i, name in enumerate(names):
            subject = make_subject(name, seed=1000 * len(split) + i,
                                   infarct=(i != 1), **kwargs)  # subject 1 of each split: no infarct
            if not labels:
                subject = Subject(**{**subject.__dict__, "cine_label": None})
            if not lge:
                subject = Subject(**{**subject.__dict__, "lge": None, "lge_label": None})
            save_subject(run_dir, subject)
    write_splits(run_dir, ids)
    n = n_train + n_val
    write_manifest(run_dir, ids["train"] + ids["val"], data_hash, lge_subjects=n if lge else 0,
                   cine_label_subjects=n if labels else 0)


TINY = [
    "data.crop=32", "data.frames=4",
    "motion.channels=[8,8]", "motion.batch_size=4", "motion.lncc_kernel=5",
    "registration.channels=4", "registration.levels=2", "registration.batch_size=4",
    "segmentation.channels=[8,16]", "segmentation.num_res_units=1", "segmentation.batch_size=4",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_cfg() -> Config:
    return load_config(None, TINY)


@pytest.fixture
def write_cache():
    """The cache writer itself, for tests that need a variant (e.g. without cine labels)."""
    return write_synthetic_cache


@pytest.fixture
def synthetic_run(tmp_path: Path) -> Path:
    write_synthetic_cache(tmp_path)
    return tmp_path
