"""A QC picture a clinician can glance at, written as PNG with zlib only (no imaging dependency).

Rows: a basal, a mid and an apical slice. Columns: cine at ED, cine at ES, motion magnitude ED->ES
(black = still, bright yellow = large), ED cine with myocardium (green) and infarct (red) outlined
and filled translucently.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from mi_pipeline.fsio import atomic_write_bytes


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as a PNG (8-bit RGB, no filtering)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape}")
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def read_png(data: bytes) -> np.ndarray:
    """Decode what ``png_bytes`` writes (8-bit RGB, filter 0); for tests."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if zlib.crc32(kind + body) & 0xFFFFFFFF != struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]:
            raise ValueError("bad CRC")
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    return rows[:, 1:].reshape(h, w, 3).copy()


def _gray(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (1, 99.5))
    g = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def _heat(mag: np.ndarray, vmax: float) -> np.ndarray:
    t = np.clip(mag / max(vmax, 1e-6), 0, 1)
    r = np.clip(3 * t, 0, 1)
    g = np.clip(3 * t - 1, 0, 1)
    b = np.clip(3 * t - 2, 0, 1) * 0.6
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def _overlay(base: np.ndarray, pred: np.ndarray) -> np.ndarray:
    out = base.astype(np.float32)
    for cls, colour in ((1, (40, 220, 60)), (2, (255, 40, 40))):
        mask = pred == cls
        out[mask] = 0.55 * out[mask] + 0.45 * np.asarray(colour, np.float32)
        out[_edges(mask)] = colour
    return out.astype(np.uint8)


def _zoom(rgb: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def qc_image(cine: np.ndarray, es: int, fields: np.ndarray | None, pred: np.ndarray, slices: list[int],
             zoom: int = 3) -> np.ndarray:
    """The picture as an RGB array. cine (Z, T, H, W), fields (Z, T, 2, H, W) or None, pred (Z, H, W)."""
    rows = []
    mags = None
    if fields is not None:
        mags = np.hypot(fields[:, es, 0], fields[:, es, 1])
    vmax = float(np.percentile(mags, 99.5)) if mags is not None and mags.size else 1.0
    for k in slices:
        tiles = [_gray(cine[k, 0]), _gray(cine[k, es]),
                 _heat(mags[k], vmax) if mags is not None else np.zeros(cine.shape[-2:] + (3,), np.uint8),
                 _overlay(_gray(cine[k, 0]), pred[k])]
        sep = np.full((cine.shape[-2], 2, 3), 255, np.uint8)
        row = tiles[0]
        for tile in tiles[1:]:
            row = np.concatenate([row, sep, tile], axis=1)
        rows.append(row)
    sep = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    image = rows[0]
    for row in rows[1:]:
        image = np.concatenate([image, sep, row], axis=0)
    return _zoom(image, zoom)


def write_qc(path: Path, cine: np.ndarray, es: int, fields: np.ndarray | None, pred: np.ndarray,
             slices: list[int]) -> None:
    atomic_write_bytes(path, png_bytes(qc_image(cine, es, fields, pred, slices)))
