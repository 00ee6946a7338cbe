"""Disk a run no longer needs: what ``python -m mi_pipeline clean`` lists and, when told, removes.

Only files no resume can read are candidates, each with the reason it exists:

* ``checkpoints/<stage>/last.pth.restart`` / ``last.pth.stale``: the position a restart or a changed
  upstream model set aside (``engine/trainer.set_aside``); resume reads ``last.pth`` only.
* ``.training_progress.corrupt``: the copy of a record that was found corrupted and rebuilt.
* ``.<name>.<random>.tmp`` anywhere in the run: a temp file of an atomic write whose process died
  (``fsio.atomic_path``); the target it was meant to replace is whole.
* ``data/.cache.tmp-*``, ``data/.cache.old-*``, ``data/.phantom.tmp-*``, ``data/.phantom.old-*``:
  step 1's staging and replaced folders left by a crash. (Step 1 replaces the cache in place when
  the data config changes, so a cache of another config never lingers under another name.)

Temp files and staging folders younger than ``min_age_s`` are left alone: a live writer may own them.
Never a candidate: ``last.pth``, ``best_model.pth``, the cache, the splits, the logs, the record.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mi_pipeline.layout import PROGRESS_FILE, RunLayout
from mi_pipeline.stages.graph import MODEL_STAGES

SET_ASIDE = ("restart", "stale")
STAGING = (".cache.tmp-", ".cache.old-", ".phantom.tmp-", ".phantom.old-")


@dataclass(frozen=True)
class Reclaimable:
    path: Path
    size: int
    why: str


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _old(path: Path, now: float, min_age_s: float) -> bool:
    try:
        return now - path.lstat().st_mtime >= min_age_s
    except FileNotFoundError:
        return False


def _set_aside(run: RunLayout) -> list[Reclaimable]:
    """One run's (or fold's) set-aside ``last.pth`` copies and corrupted-record copy."""
    found = []
    for stage in MODEL_STAGES:
        for why in SET_ASIDE:
            path = run.last(stage).with_name(f"{run.last(stage).name}.{why}")
            if path.is_file():
                found.append(Reclaimable(path, _size(path), f"set aside by a {why} of {stage}; resume uses last.pth"))
    corrupt = run.root / f"{PROGRESS_FILE}.corrupt"
    if corrupt.is_file():
        found.append(Reclaimable(corrupt, _size(corrupt), "copy of a corrupted record that was rebuilt"))
    return found


def find_reclaimable(layout: RunLayout, min_age_s: float = 600.0) -> list[Reclaimable]:
    """Everything under the run (and its folds) that no resume needs, sorted by path."""
    now, found = time.time(), []
    for run in [layout, *(RunLayout(root) for root in layout.fold_roots())]:  # a k-fold run: each fold too
        found += _set_aside(run)
    data = layout.root / "data"
    staged = []
    if data.is_dir():
        staged = [p for p in data.iterdir() if p.name.startswith(STAGING) and _old(p, now, min_age_s)]
        found += [Reclaimable(p, _size(p), "step 1 staging/replaced folder left by a crash") for p in staged]
    for path in layout.root.rglob(".*.tmp"):
        if path.is_file() and not any(s in path.parents for s in staged) and _old(path, now, min_age_s):
            found.append(Reclaimable(path, _size(path), "temp file of an interrupted atomic write"))
    return sorted(found, key=lambda r: str(r.path))


def remove(items: list[Reclaimable]) -> int:
    """Delete ``items``; the bytes freed."""
    freed = 0
    for item in items:
        if item.path.is_dir() and not item.path.is_symlink():
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)
        freed += item.size
    return freed


def human(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
