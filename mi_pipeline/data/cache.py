"""The preprocessed cache: what step 1 writes and steps 2-4 read, so no epoch decodes NIfTI.

Layout under the run root::

    data/cache/<subject>.npz      one subject, arrays below (written atomically)
    data/cache/manifest.json      written last: subject ids + the data config hash
    data/splits/{train,val,test}.txt   one subject id per line

All arrays live on the *cropped, resampled cine grid* of the subject. Label codes everywhere:
0 background, 1 LV cavity, 2 myocardium, 3 infarct (the generic layout's 4 = no-reflow is folded
into 3 when the cache is written), 5 right ventricle (ACDC, M&Ms labels; anchors the AHA segments).
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mi_pipeline.config import CINE_ONLY_FORMATS, Config, stage_hash
from mi_pipeline.errors import InputError
from mi_pipeline.fsio import atomic_write_bytes, atomic_write_text
from mi_pipeline.layout import RunLayout

SPLITS = ("train", "val", "test")
RV_CODE = 5  # the RV blood pool, in cine labels only (anchors the AHA segments; ``segmentation.learn_rv``)
CACHE_VERSION = 1


@dataclass(frozen=True)
class Subject:
    """One preprocessed subject.

    cine        float32 (Z, T, H, W), intensities in [0, 1]; T = data.frames, frame 0 is ED
    es          index of end-systole among the T kept frames
    lge         float32 (Z, H, W) in [0, 1], LGE resampled onto the cine grid (breath-hold offset remains)
    lge_label   uint8 (Z, H, W), LGE labels on the cine grid (still in LGE pose)
    cine_label  uint8 (Z, T, H, W), true labels in cine pose where known (phantom), else None
    spacing     (row, col, slice) voxel size in mm
    affine      float64 (4, 4) voxel -> world of the cropped cine grid, voxel axes (H, W, Z)
    """

    id: str
    cine: np.ndarray
    es: int
    spacing: tuple[float, float, float]
    affine: np.ndarray
    lge: np.ndarray | None = None
    lge_label: np.ndarray | None = None
    cine_label: np.ndarray | None = None


def cache_dir(run_dir: Path) -> Path:
    return RunLayout(Path(run_dir)).cache_dir


def splits_dir(run_dir: Path) -> Path:
    return RunLayout(Path(run_dir)).splits_dir


def excluded_path(run_dir: Path) -> Path:
    """Subjects step 1 left out and why, beside the splits they are missing from."""
    return splits_dir(run_dir) / "excluded.json"


def save_subject(run_dir: Path, subject: Subject) -> Path:
    arrays = {
        "cine": subject.cine.astype(np.float32),
        "es": np.int64(subject.es),
        "spacing": np.asarray(subject.spacing, dtype=np.float64),
        "affine": np.asarray(subject.affine, dtype=np.float64),
    }
    for name in ("lge", "lge_label", "cine_label"):
        value = getattr(subject, name)
        if value is not None:
            arrays[name] = value
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = cache_dir(run_dir) / f"{subject.id}.npz"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_subject(run_dir: Path, subject_id: str) -> Subject:
    path = cache_dir(run_dir) / f"{subject_id}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise InputError(f"{path}: cached subject missing; run step 1 (train --stage data) again") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cached subject unreadable ({exc}); run step 1 again") from None
    return Subject(
        id=subject_id,
        cine=arrays["cine"],
        es=int(arrays["es"]),
        spacing=tuple(float(s) for s in arrays["spacing"]),  # type: ignore[arg-type]
        affine=arrays["affine"],
        lge=arrays.get("lge"),
        lge_label=arrays.get("lge_label"),
        cine_label=arrays.get("cine_label"),
    )


def write_manifest(run_dir: Path, subject_ids: list[str], data_hash: str, lge_subjects: int | None = None,
                   cine_label_subjects: int | None = None) -> None:
    manifest = {"version": CACHE_VERSION, "data_hash": data_hash, "subjects": sorted(subject_ids),
                "lge_subjects": lge_subjects, "cine_label_subjects": cine_label_subjects}
    atomic_write_text(cache_dir(run_dir) / "manifest.json", json.dumps(manifest, indent=1) + "\n")


def read_manifest(run_dir: Path) -> dict | None:
    """The cache manifest, or None when the cache is absent or incomplete."""
    path = cache_dir(run_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_VERSION:
        return None
    return manifest


def write_splits(run_dir: Path, splits: dict[str, list[str]]) -> None:
    for name in SPLITS:
        atomic_write_text(splits_dir(run_dir) / f"{name}.txt", "".join(f"{s}\n" for s in splits.get(name, [])))


def write_exclusions(run_dir: Path, excluded: dict[str, str]) -> None:
    """Record ``{subject: reason}`` (empty when none) so a split's missing subjects are explained."""
    rows = [{"subject": sid, "reason": reason} for sid, reason in sorted(excluded.items())]
    atomic_write_text(excluded_path(run_dir), json.dumps({"excluded": rows}, indent=1) + "\n")


def read_exclusions(run_dir: Path) -> dict[str, str]:
    """``{subject: reason}`` from ``excluded.json``; empty for runs made before exclusions existed."""
    try:
        rows = json.loads(excluded_path(run_dir).read_text())["excluded"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {row["subject"]: row["reason"] for row in rows}


def read_split(run_dir: Path, name: str) -> list[str]:
    path = splits_dir(run_dir) / f"{name}.txt"
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        raise InputError(f"{path}: split list missing; run step 1 (train --stage data) first") from None


def load_split(run_dir: Path, name: str) -> list[Subject]:
    return [load_subject(run_dir, s) for s in read_split(run_dir, name)]


class SubjectStore:
    """Cached subjects read on demand, the most recently used kept in memory up to ``budget_mb``.

    Why: a stage used to load its whole split at once, so its memory grew with the cohort. Through
    one store (shared by its splits) it holds at most the budget (plus the subjects in use), whatever the cohort size; a
    subject evicted is read again from its ``.npz`` when next needed (the OS page cache makes that cheap).
    """

    def __init__(self, run_dir: Path, budget_mb: int) -> None:
        self.run_dir = Path(run_dir)
        self.budget = budget_mb * 2**20
        self._held: OrderedDict[str, tuple[Subject, int]] = OrderedDict()
        self._bytes = 0

    def get(self, subject_id: str) -> Subject:
        if subject_id in self._held:
            self._held.move_to_end(subject_id)
            return self._held[subject_id][0]
        subject = load_subject(self.run_dir, subject_id)
        size = subject_nbytes(subject)
        while self._held and self._bytes + size > self.budget:
            _, (_, freed) = self._held.popitem(last=False)
            self._bytes -= freed
        if size <= self.budget:
            self._held[subject_id] = (subject, size)
            self._bytes += size
        return subject

    def each(self, ids: list[str]) -> Iterator[Subject]:
        """``ids`` one after the other (holding at most the budget, not all of them)."""
        return (self.get(sid) for sid in ids)


def subject_nbytes(subject: Subject) -> int:
    return sum(a.nbytes for a in (subject.cine, subject.lge, subject.lge_label, subject.cine_label) if a is not None)


def data_is_prepared(cfg: Config, run_dir: Path) -> bool:
    """True when the cache is complete for this config: manifest present, hash matches, all files there."""
    manifest = read_manifest(Path(run_dir))
    if manifest is None or manifest.get("data_hash") != stage_hash(cfg, "data"):
        return False
    subjects = manifest.get("subjects")
    if not isinstance(subjects, list) or not subjects:
        return False
    folder = cache_dir(Path(run_dir))
    if not all((folder / f"{sid}.npz").is_file() for sid in subjects):
        return False
    return all((splits_dir(Path(run_dir)) / f"{name}.txt").is_file() for name in SPLITS)


def lge_available(cfg: Config, run_dir: Path) -> bool | None:
    """Whether this run's data has LGE images for the stages that learn from them.

    From the prepared cache's manifest when it counts them, else from the dataset format (ACDC and
    M&Ms are cine-only); None when nothing can say yet (a dataset not prepared, or a cache made
    before the manifest counted LGE images).
    """
    counted = _counted(cfg, run_dir, "lge_subjects")
    if counted is not None:
        return counted[0] > 0
    return False if cfg.data.format in CINE_ONLY_FORMATS else None


def cine_labels_available(cfg: Config, run_dir: Path) -> bool | None:
    """Whether every subject of this run's data has cine labels (segmentation's myocardium part can learn
    from them when there is no LGE), decided like ``lge_available``: the prepared cache's count first;
    before the data is prepared, True for ACDC and M&Ms (their adapters refuse a subject without its
    label file); None when nothing can say yet."""
    counted = _counted(cfg, run_dir, "cine_label_subjects")
    if counted is not None:
        return counted[0] == counted[1] > 0
    return True if cfg.data.format in CINE_ONLY_FORMATS else None


def _counted(cfg: Config, run_dir: Path, key: str) -> tuple[int, int] | None:
    """(the manifest's ``key`` count, its subjects) of a cache prepared under this config, else None."""
    manifest = read_manifest(Path(run_dir))
    if (manifest is None or manifest.get("data_hash") != stage_hash(cfg, "data")
            or not isinstance(manifest.get(key), int) or not isinstance(manifest.get("subjects"), list)):
        return None
    return manifest[key], len(manifest["subjects"])
