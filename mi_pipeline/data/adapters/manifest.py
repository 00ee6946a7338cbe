"""A manifest of paths, for data that is not in one folder per subject.

``data.root`` is the manifest file (``.csv``, ``.yaml``/``.yml``) or a folder holding
``manifest.csv`` / ``manifest.yaml``. The folder that holds the manifest is the dataset root: every
path is relative to it (or absolute inside it) and may not leave it. Columns / keys per subject::

    subject, cine, lge, lge_label[, cine_label][, ed][, es]

CSV: a header row with those names. YAML: ``subjects:`` a list of mappings with those keys (or the
list itself). ``lge``/``lge_label`` may be empty together (cine-only subject: motion only).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from mi_pipeline.data.adapters.common import SAFE_ID
from mi_pipeline.data.generic import RawSubject, check_overlap
from mi_pipeline.data.nifti import load_image, load_label
from mi_pipeline.errors import InputError

KEYS = ("subject", "cine", "lge", "lge_label", "cine_label", "ed", "es")
NAMES = ("manifest.csv", "manifest.yaml", "manifest.yml")


def manifest_file(root: Path) -> Path:
    if root.is_dir():
        for name in NAMES:
            if (root / name).is_file():
                return root / name
        raise InputError(f"{root}: no manifest ({' / '.join(NAMES)}) in this folder")
    if not root.is_file():
        raise InputError(f"{root}: manifest not found")
    return root


def read_manifest(root: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    path = manifest_file(root)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read manifest ({exc})") from None
    if path.suffix.lower() == ".csv":
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(text.splitlines())]
    else:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__})") from None
        raw = raw.get("subjects") if isinstance(raw, dict) else raw
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            raise InputError(f"{path}: expected 'subjects:' with a list of mappings")
        rows = [{str(k): ("" if v is None else v) for k, v in r.items()} for r in raw]
    subjects: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows, start=1):
        unknown = sorted(set(row) - set(KEYS) - {""})
        if unknown:
            raise InputError(f"{path}: entry {i}: unknown column(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")
        sid = str(row.get("subject", "")).strip()
        if not SAFE_ID.match(sid):
            raise InputError(f"{path}: entry {i}: subject {sid!r} is empty or unsafe (letters, digits, '.', '_', '-')")
        if sid.lower() in {s.lower() for s in subjects}:
            raise InputError(f"{path}: entry {i}: duplicate subject {sid!r}")
        if not str(row.get("cine", "")).strip():
            raise InputError(f"{path}: entry {i} ({sid}): no cine path")
        if bool(str(row.get("lge", "")).strip()) != bool(str(row.get("lge_label", "")).strip()):
            raise InputError(f"{path}: entry {i} ({sid}): lge and lge_label go together (both or neither)")
        subjects[sid] = row
    if not subjects:
        raise InputError(f"{path}: manifest lists no subjects")
    return path, subjects


def resolve(base: Path, manifest: Path, sid: str, key: str, value: str) -> Path:
    """A manifest path, which must stay inside the dataset root (no '..' or absolute escapes)."""
    candidate = Path(value)
    full = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not full.is_relative_to(base.resolve()):
        raise InputError(f"{manifest}: {sid}: {key} path {value!r} leaves the dataset root {base}")
    return full


def list_subjects(root: Path) -> list[str]:
    return sorted(read_manifest(root)[1])


def _frame(value: Any, manifest: Path, sid: str, key: str, frames: int) -> int | None:
    if value in ("", None):
        return None
    try:
        frame = int(str(value))
    except ValueError:
        raise InputError(f"{manifest}: {sid}: {key} must be an integer frame index, got {value!r}") from None
    if not 0 <= frame < frames:
        raise InputError(f"{manifest}: {sid}: {key}={frame} out of range for {frames} frames (0-based)")
    return frame


def load_subject(root: Path, subject: str) -> RawSubject:
    manifest, rows = read_manifest(root)
    row, base = rows[subject], manifest.parent
    path = {k: resolve(base, manifest, subject, k, str(row[k]).strip()) for k in ("cine", "lge", "lge_label", "cine_label")
            if str(row.get(k, "")).strip()}
    cine, cine_affine = load_image(path["cine"], ndim=4, what="cine (X x Y x slices x frames)", min_frames=2)
    lge = lge_affine = lge_label = None
    if "lge" in path:
        lge, lge_affine = load_image(path["lge"], ndim=3, what="LGE")
        lge_label, _ = load_label(path["lge_label"], shape=lge.shape, affine=lge_affine, image_name=path["lge"].name)
        check_overlap(path["lge"], lge.shape, lge_affine, cine.shape[:3], cine_affine)
    cine_label = None
    if "cine_label" in path:
        cine_label, _ = load_label(path["cine_label"], shape=cine.shape, affine=cine_affine, image_name=path["cine"].name,
                                   rv=True)
    nt = cine.shape[3]
    ed = _frame(row.get("ed"), manifest, subject, "ed", nt) or 0
    es = _frame(row.get("es"), manifest, subject, "es", nt)
    if es is not None and es == ed:
        raise InputError(f"{manifest}: {subject}: es equals ed ({ed})")
    raw = RawSubject(id=subject, folder=path["cine"].parent, cine=cine, cine_affine=cine_affine, lge=lge,
                     lge_affine=lge_affine, lge_label=lge_label, ed=ed, es=es, cine_label=cine_label)
    raw.cine_path = path["cine"]
    if "lge" in path:
        raw.lge_path, raw.lge_label_path = path["lge"], path["lge_label"]
    return raw
