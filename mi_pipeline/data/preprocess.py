"""Raw subject -> cache ``Subject``: one resampling from the source grids onto a cropped cine grid.

Why one resampling: the target grid (``data.crop`` pixels square around the LV, the cine's own
slices; in-plane spacing ``data.spacing_mm``, coarser when the heart would not fit: see ``crop_spacing``) is defined
in world coordinates, and every array
(cine frames, cine labels, LGE, LGE labels) is sampled onto it once through its own affine. That
keeps labels exact (nearest neighbour) and puts the LGE on the cine grid with only the breath-hold
offset left between them. Voxel axis 2 stays the slice axis (short-axis stacks are never permuted
through it); the in-plane axes are put in a canonical order and sign so subjects look alike.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from mi_pipeline.config import DataConfig
from mi_pipeline.data.cache import Subject
from mi_pipeline.data.generic import RawSubject
from mi_pipeline.data.localise import LvLocation, locate_lv
from mi_pipeline.errors import InputError

# around the LV blood pool found: the wall, basal slices the pools miss and the centre's own error. On 105 real
# labelled hearts the labelled myocardium reached beyond the pools' radius by 11 mm (median), 19 (90th
# percentile), 23 (95th), 32 (99th): 22 cuts ~7 % of real hearts, 30 would cut ~2 % but would also move most
# phantom hearts (pool radius 23-29 mm) off the 64 x 1.6 mm grid their models were trained on; kept at 22.
# Since the radius counts the slices the chain skipped (localise._skipped; 106 real hearts with a radius):
# 11 mm (median), 18 (90th), 19 (95th), 31 (99th); 22 is exceeded on 3 % (the crop then cut 2 of 107)
# With the fifth pool level and skipped pools capped at a link's reach beyond the chain (107 hearts): 11, 18,
# 20, 31 mm; 22 is exceeded on 2 (patient038 by 9 mm, held-out 057 by 25), and both crops cut
CROP_MARGIN_MM = 22.0
SPACING_TOLERANCE = 0.03  # a heart that nearly fits keeps the configured grid (and the cache its content)
SPACING_QUANTUM = 1000.0  # crop spacings are whole micrometres (per mm)


def canonical_inplane(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit world directions for the output rows and columns.

    The two in-plane voxel axes are ordered by their dominant world axis and each flipped so that
    that component is positive: the same anatomy then looks the same whatever the scanner's flips.
    """
    u0 = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    u1 = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    if int(np.argmax(np.abs(u0))) > int(np.argmax(np.abs(u1))):
        u0, u1 = u1, u0
    u0 = u0 if u0[np.argmax(np.abs(u0))] > 0 else -u0
    u1 = u1 if u1[np.argmax(np.abs(u1))] > 0 else -u1
    return u0, u1


def lv_center_heuristic(cine: np.ndarray, spacing: tuple[float, float]) -> tuple[float, float]:
    """Label-free LV centre (voxel coordinates along cine axes 0, 1) of a 4D X x Y x Z x T cine: the fallback
    of ``localise.locate_lv`` (5-18 mm off on real hearts, so it is only used, and named, when no checked
    blood pool is found).

    The beating heart is where intensity changes most over the cycle: the temporal standard
    deviation, averaged over slices, weighted toward the image centre and smoothed at ~10 mm, peaks
    over the LV blood pool, whose endocardial border moves the most.
    """
    nx, ny = cine.shape[:2]
    std = cine.std(axis=3).mean(axis=2)
    scale = float(np.percentile(cine, 99)) or 1.0
    std = std / scale
    x = (np.arange(nx) - (nx - 1) / 2) / (0.3 * nx)
    y = (np.arange(ny) - (ny - 1) / 2) / (0.3 * ny)
    window = np.exp(-0.5 * (x[:, None] ** 2 + y[None, :] ** 2))
    smooth = ndimage.gaussian_filter(std * window, sigma=(10.0 / spacing[0], 10.0 / spacing[1]))
    peak = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    blobs, _ = ndimage.label(smooth >= 0.6 * smooth[peak])
    mask = blobs == blobs[peak]
    ci, cj = ndimage.center_of_mass(smooth * mask)
    return float(ci), float(cj)


def locate(raw: RawSubject) -> LvLocation:
    """The label-free LV location of a raw cine (``localise.locate_lv``, the motion-map peak as fallback)."""
    sp = np.linalg.norm(raw.cine_affine[:3, :3], axis=0)
    return locate_lv(raw.cine, (float(sp[0]), float(sp[1])), fallback=lv_center_heuristic)


def crop_spacing(raw: RawSubject, center: tuple[float, float], cfg: DataConfig,
                 found: LvLocation | None = None) -> float:
    """In-plane spacing of the crop: ``data.spacing_mm``, or coarser so the whole heart fits in ``data.crop``.

    Why: a fixed 64 px x 1.6 mm (102 mm) crop cuts off dilated hearts. The half-width the heart needs is
    the larger of the labelled myocardium's reach from ``center`` (``_label_reach_mm``: cine labels, else
    LGE labels) and the LV blood pool's radius found plus ``CROP_MARGIN_MM`` (what ``predict`` asks for);
    with neither, the configured spacing. Hearts that fit (within ``SPACING_TOLERANCE``) keep the
    configured spacing.
    """
    needs = [_label_reach_mm(raw, center)]
    if found is not None and found.radius_mm is not None:
        needs.append(found.radius_mm + CROP_MARGIN_MM)
    need = max((n for n in needs if n is not None), default=None)
    if need is None:
        return cfg.spacing_mm
    wanted = need / clear_half_width_px(cfg.crop)
    # up to the next micrometre: the same cine read from DICOM or NIfTI (another summation order) gives
    # the same grid bit for bit, not one 1e-9 mm apart whose interpolation differs in the last bits
    wanted = math.ceil(wanted * SPACING_QUANTUM) / SPACING_QUANTUM
    return wanted if wanted > cfg.spacing_mm * (1.0 + SPACING_TOLERANCE) else cfg.spacing_mm


def _label_reach_mm(raw: RawSubject, center: tuple[float, float]) -> float | None:
    """The farthest labelled myocardium voxel (any frame) from ``center`` in the cine's plane, in mm: the
    cine labels', else the LGE labels' carried through world space (a site's training data; the breath-hold
    offset between the two scans is in it). None without labels."""
    sp = np.linalg.norm(raw.cine_affine[:3, :2], axis=0)
    if raw.cine_label is not None:
        ii, jj = np.nonzero(np.isin(raw.cine_label, (2, 3, 4)).any(axis=(2, 3)))
    elif raw.lge_label is not None and raw.lge_affine is not None:
        ii, jj, _ = _lge_to_cine_voxels(raw, np.argwhere(np.isin(raw.lge_label, (2, 3, 4))).T)
    else:
        return None
    if len(ii) == 0:
        return None
    return float(np.max(np.hypot((ii - center[0]) * sp[0], (jj - center[1]) * sp[1])))


def clear_half_width_px(crop: int) -> float:
    """How far the crop reaches from its centre without touching its outermost pixel ring, in pixels.

    The centre sits at pixel (crop - 1) / 2 (``target_affine``), so the pixels 1 .. crop - 2 reach (crop - 3) / 2
    either side of it, not (crop - 2) / 2 (half a pixel short: real patient029's myocardium, 0.3 mm inside
    the radius asked for, fell on the outer ring).
    """
    return (crop - 3) / 2


def on_outer_ring(mask: np.ndarray) -> bool:
    """Whether a (..., H, W) mask has a pixel on the crop's outermost ring: the heart may go on beyond it."""
    return bool(mask[..., 0, :].any() or mask[..., -1, :].any() or mask[..., :, 0].any() or mask[..., :, -1].any())


def _label_center(raw: RawSubject) -> tuple[float, float] | None:
    """LV centre from labels (cine labels at ED, else LGE labels mapped through world space)."""
    if raw.cine_label is not None:
        mask = np.isin(raw.cine_label[..., raw.ed], (1, 2, 3, 4))  # the LV only (5 = RV)
        if mask.any():
            ci, cj, _ = ndimage.center_of_mass(mask)
            return float(ci), float(cj)
    if raw.lge_label is None or raw.lge_affine is None:
        return None
    idx = np.argwhere(raw.lge_label > 0)
    if len(idx) == 0:
        return None
    vox = _lge_to_cine_voxels(raw, idx.mean(axis=0)[:, None])
    return float(vox[0, 0]), float(vox[1, 0])


def _lge_to_cine_voxels(raw: RawSubject, idx: np.ndarray) -> np.ndarray:
    """LGE voxel coordinates (3, N) carried through world space onto the cine's voxel grid, (3, N)."""
    assert raw.lge_affine is not None
    world = raw.lge_affine[:3, :3] @ idx + raw.lge_affine[:3, 3:4]
    return np.linalg.solve(raw.cine_affine[:3, :3], world - raw.cine_affine[:3, 3:4])


def target_affine(cine_affine: np.ndarray, center: tuple[float, float], spacing: float, crop: int) -> np.ndarray:
    """Voxel -> world of the crop grid (axes rows, cols, slices) centred on ``center`` (cine voxels)."""
    e0, e1 = canonical_inplane(cine_affine)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2] = e0 * spacing, e1 * spacing, cine_affine[:3, 2]
    world_c = cine_affine[:3, :3] @ np.array([center[0], center[1], 0.0]) + cine_affine[:3, 3]
    origin = world_c - (crop - 1) / 2 * (out[:3, 0] + out[:3, 1])
    # snap the origin to a cine voxel centre: at equal spacing, samples then hit voxels exactly
    vox = np.linalg.solve(cine_affine[:3, :3], origin - cine_affine[:3, 3])
    out[:3, 3] = cine_affine[:3, :3] @ np.round(vox) + cine_affine[:3, 3]
    return out


def sample(volume: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, shape: tuple[int, int, int],
           order: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample a 3D ``volume`` on the ``dst`` grid through world space.

    In-plane linear (``order`` 1) or nearest (0); along the slice axis always the nearest slice
    (thick short-axis slices must not be blended). Returns (values, inside-source-FOV mask).
    """
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij"), 0).reshape(3, -1)
    m = np.linalg.solve(src_affine, dst_affine)
    coords = m[:3, :3] @ grid + m[:3, 3:4]
    coords[2] = np.round(coords[2])
    limits = np.asarray(volume.shape[:3], dtype=np.float64)[:, None]
    valid = np.all((coords > -0.5) & (coords < limits - 0.5), axis=0)
    values = ndimage.map_coordinates(volume, coords, order=order, mode="nearest")
    values = np.where(valid, values, 0).reshape(shape).astype(volume.dtype)
    return values, valid.reshape(shape)


def resample_frames(n_src: int, ed: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cyclic linear interpolation positions: (frame a, frame b, weight of b) for ``n_out`` frames from ED."""
    pos = ed + np.arange(n_out) * n_src / n_out
    lo = np.floor(pos + 1e-9).astype(int)
    w = np.clip(pos - lo, 0.0, 1.0)
    w[w < 1e-9] = 0.0
    return lo % n_src, (lo + 1) % n_src, w


def estimate_es(cine: np.ndarray, spacing: float) -> int:
    """Label-free ES among frames of a (Z, T, H, W) crop centred on the LV: the least bright blood pool."""
    _, t, h, w = cine.shape
    yy, xx = np.mgrid[:h, :w]
    disc = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) * spacing < 25.0
    curve = cine[:, :, disc].mean(axis=(0, 2))
    return int(np.argmin(curve[1:]) + 1) if t > 1 else 0


def estimate_ed(cine: np.ndarray, spacing: tuple[float, float], tolerance: float = 0.05) -> int:
    """Label-free ED frame of a raw 4D X x Y x Z x T cine (for cines whose frame 0 is not ED).

    The blood pool within 25 mm of the LV centre (``localise.locate_lv``) is least bright at ES;
    ED is the last frame, in the half cycle before ES, whose brightness is within ``tolerance`` of
    that half cycle's maximum (the end of diastasis, where contraction begins).
    """
    nx, ny, _, nt = cine.shape
    if nt < 3:
        return 0
    ci, cj = locate_lv(cine, spacing, fallback=lv_center_heuristic).center
    ii, jj = np.mgrid[:nx, :ny]
    disc = np.hypot((ii - ci) * spacing[0], (jj - cj) * spacing[1]) < 25.0
    curve = cine[disc].mean(axis=(0, 1)) if disc.any() else cine.mean(axis=(0, 1, 2))
    es = int(np.argmin(curve))
    window = [(es - d) % nt for d in range(max(nt // 2, 1), 0, -1)]  # oldest first, ends just before ES
    values = curve[window]
    top, span = float(values.max()), float(curve.max() - curve.min()) or 1.0
    near = [t for t, v in zip(window, values) if v >= top - tolerance * span]
    return int(near[-1])


def normalise(x: np.ndarray, valid: np.ndarray, path: Path) -> np.ndarray:
    """Robust [0, 1] scaling from the 1st and 99.5th percentiles of the voxels inside the field of view."""
    values = x[valid]
    if values.size == 0:
        raise InputError(f"{path}: no voxel of the image falls inside the crop around the LV")
    lo, hi = np.percentile(values, (1.0, 99.5))
    if hi - lo <= 1e-12 * max(abs(hi), 1.0):
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise InputError(f"{path}: image is constant inside the crop around the LV")
    return np.where(valid, np.clip((x - lo) / (hi - lo), 0.0, 1.0), 0.0).astype(np.float32)


def preprocess_subject(raw: RawSubject, cfg: DataConfig, center: tuple[float, float] | None = None,
                       found: LvLocation | None = None) -> Subject:
    """Resample, crop, normalise; see the module docstring. ``center`` overrides the crop centre, which is
    otherwise the labels' LV centre, or, without labels, where ``locate`` finds the LV (``found``: a
    ``locate`` the caller already made, e.g. to report it). The crop's width is ``predict``'s (the pool
    found plus a margin) for every subject, widened where labelled myocardium reaches farther
    (``crop_spacing``): training on fixed 102 mm crops while predict widens them for most real hearts
    (ACDC: 83 % of 100, median 1.13x, 90th percentile 1.40x) would show the model hearts at another scale."""
    _, _, nz, nt = raw.cine.shape
    cine_path = raw.cine_path or raw.folder / "cine.nii.gz"
    if center is None and found is not None:
        center = found.center
    if center is None:
        center = _label_center(raw)
    if found is None:  # sized as predict sizes it, labels or not: a model sees hearts at one scale
        found = locate(raw)
    if center is None:
        center = found.center
    spacing_mm = crop_spacing(raw, center, cfg, found)
    dst = target_affine(raw.cine_affine, center, spacing_mm, cfg.crop)
    shape = (cfg.crop, cfg.crop, nz)

    a, b, wgt = resample_frames(nt, raw.ed, cfg.frames)
    frames, labels = [], []
    valid = np.ones(shape, dtype=bool)
    for fa, fb, wb in zip(a, b, wgt):
        vol = raw.cine[..., fa] if wb == 0 else (1 - wb) * raw.cine[..., fa] + wb * raw.cine[..., fb]
        values, valid = sample(np.ascontiguousarray(vol, dtype=np.float32), raw.cine_affine, dst, shape, order=1)
        frames.append(values)
        if raw.cine_label is not None:
            nearest = fb if wb >= 0.5 else fa
            labels.append(sample(raw.cine_label[..., nearest], raw.cine_affine, dst, shape, order=0)[0])
    cine = normalise(np.stack(frames, -1), valid[..., None] & np.ones(len(frames), bool), cine_path)
    cine = np.ascontiguousarray(cine.transpose(2, 3, 0, 1))  # (Z, T, H, W)
    cine_label = None
    if labels:
        cine_label = np.stack(labels, -1).transpose(2, 3, 0, 1)
        cine_label = np.ascontiguousarray(np.where(cine_label == 4, 3, cine_label).astype(np.uint8))

    lge = lge_label = None
    if raw.lge is not None:  # cine-only subjects (ACDC, M&Ms, predict) have no LGE
        lge_path = raw.lge_path or raw.folder / "lge.nii.gz"
        label_path = raw.lge_label_path or raw.folder / "lge_label.nii.gz"
        lge, lge_valid = sample(raw.lge.astype(np.float32), raw.lge_affine, dst, shape, order=1)
        if not lge_valid.any():
            raise InputError(f"{lge_path}: field of view does not overlap the crop around the LV")
        lge = np.ascontiguousarray(normalise(lge, lge_valid, lge_path).transpose(2, 0, 1))
        if raw.lge_label is not None:
            lge_label, _ = sample(raw.lge_label, raw.lge_affine, dst, shape, order=0)
            lge_label = np.ascontiguousarray(np.where(lge_label == 4, 3, lge_label).astype(np.uint8).transpose(2, 0, 1))
            if not np.isin(lge_label, (2, 3)).any():
                raise InputError(f"{label_path}: no myocardium inside the crop around the LV "
                                 f"(LGE and cine do not show the same heart?)")

    es = _es_index(raw, cfg.frames, cine, spacing_mm)
    spacing = (spacing_mm, spacing_mm, float(np.linalg.norm(raw.cine_affine[:3, 2])))
    return Subject(id=raw.id, cine=cine, es=es, spacing=spacing, affine=dst, lge=lge, lge_label=lge_label,
                   cine_label=cine_label)


def _es_index(raw: RawSubject, n_out: int, cine: np.ndarray, spacing: float) -> int:
    """ES among the kept frames: info.yaml, else the smallest true cavity, else image-based."""
    nt = raw.cine.shape[3]
    es = raw.es
    if es is None and raw.cine_label is not None:
        es = int(np.argmin((raw.cine_label == 1).sum(axis=(0, 1, 2))))
    if es is None or es == raw.ed:
        return estimate_es(cine, spacing)
    index = int(round(((es - raw.ed) % nt) * n_out / nt)) % n_out
    return max(index, 1) if n_out > 1 else 0
