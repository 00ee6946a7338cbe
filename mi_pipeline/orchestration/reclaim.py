"""Disk a run no longer needs: what ``python -m mi_pipeline clean`` lists and, when told, removes.

Only a run directory is cleaned (``looks_like_run``: its record, ``checkpoints/`` or ``data/splits``;
a home directory or a project folder is refused), and only files no resume can read are candidates,
each with the reason it exists:

* ``checkpoints/<stage>/last.pth.restart`` / ``last.pth.stale``: the position a restart or a changed
  upstream model set aside (``engine/trainer.set_aside``); resume reads ``last.pth`` only.
* ``.training_progress.corrupt``: the copy of a record that was found corrupted and rebuilt.
* ``.<name>.<random>.tmp`` in the run's own folders (the top, ``checkpoints/<stage>``,
  ``logs/<stage>``, ``data``, ``data/splits``, ``data/cache``): a temp file of an atomic write whose
  process died (``fsio.atomic_path``); the target it was meant to replace is whole.
* ``data/.cache.tmp-*``, ``data/.cache.old-*``, ``data/.phantom.tmp-*``, ``data/.phantom.old-*``:
  step 1's staging and replaced folders left by a crash. (Step 1 replaces the cache in place when
  the data config changes, so a cache of another config never lingers under another name.)

What a live writer may own is left alone: a temp file younger than ``min_age_s``; a staging folder
with anything inside younger than that (its own mtime is fixed when it is made, while step 1 fills
it for as long as it takes); any staging folder while the data stage is recorded running in a
process or job that is still alive; and the temp files of a stage recorded running in a live one.
Symbolic links are never followed: a fold folder that is a link (say to another run) is not
entered, and a candidate reached through a link is not one. The folds are those
``data/splits/folds.json`` lists (``data/folds.fold_roots``).
Never a candidate: ``last.pth``, ``best_model.pth``, the cache, the splits, the logs, the record.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mi_pipeline.data import folds as fold_split
from mi_pipeline.errors import UserError
from mi_pipeline.graph import MODEL_STAGES, STAGES
from mi_pipeline.layout import PROGRESS_FILE, RunLayout
from mi_pipeline.orchestration import lease
from mi_pipeline.orchestration.progress import ProgressFile

SET_ASIDE = ("restart", "stale")
STAGING = (".cache.tmp-", ".cache.old-", ".phantom.tmp-", ".phantom.old-")
TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # fsio.atomic_path's .<name>.<random>.tmp


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
        return now - newest_mtime(path) >= min_age_s
    except FileNotFoundError:
        return False


def newest_mtime(path: Path) -> float:
    """The newest mtime of ``path`` and, for a folder, of anything inside it (links not followed): a
    staging folder's own mtime is fixed when it is made, while step 1 keeps writing inside it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def looks_like_run(layout: RunLayout) -> bool:
    """Whether ``layout.root`` is a run directory: what any step of a run leaves there (its record,
    ``checkpoints/`` or ``data/splits``). ``clean`` refuses anything else."""
    return layout.progress.is_file() or layout.checkpoints.is_dir() or layout.splits_dir.is_dir()


def _inside(path: Path, root: Path) -> bool:
    """``path`` is no link and, with every link on its way resolved, still lies under ``root``."""
    return not path.is_symlink() and path.resolve().is_relative_to(root.resolve())


def _run_folders(layout: RunLayout) -> list[RunLayout]:
    """The run and its folds, never a fold folder that is a link or leads out of the run."""
    folds = [RunLayout(root) for root in fold_split.fold_roots(layout.root)
             if root.is_dir() and _inside(root, layout.root)]
    return [layout, *folds]


def _set_aside(run: RunLayout) -> list[Reclaimable]:
    """One run's (or fold's) set-aside ``last.pth`` copies and corrupted-record copy."""
    found = []
    for stage in MODEL_STAGES:
        for why in SET_ASIDE:
            path = run.last(stage).with_name(f"{run.last(stage).name}.{why}")
            if path.is_file() and _inside(path, run.root):
                found.append(Reclaimable(path, _size(path), f"set aside by a {why} of {stage}; resume uses last.pth"))
    corrupt = run.root / f"{PROGRESS_FILE}.corrupt"
    if corrupt.is_file() and _inside(corrupt, run.root):
        found.append(Reclaimable(corrupt, _size(corrupt), "copy of a corrupted record that was rebuilt"))
    return found


def find_reclaimable(layout: RunLayout, min_age_s: float = 600.0) -> list[Reclaimable]:
    """Everything under the run (and its folds) that no resume needs, sorted by path.

    Raises UserError when ``layout.root`` is not a run directory.
    """
    if not looks_like_run(layout):
        raise UserError(f"{layout.root}: not a run directory (no {PROGRESS_FILE}, checkpoints/ or data/splits/); "
                        f"clean only works on a run: give its root with --run-dir")
    now, found = time.time(), []
    runs = _run_folders(layout)
    for run in runs:
        found += _set_aside(run)
    staged = _staging(layout, now, min_age_s)
    found += [Reclaimable(p, _size(p), "step 1 staging/replaced folder left by a crash") for p in staged]
    for run in runs:
        for folder in _temp_folders(run, layout.root):
            found += [Reclaimable(p, _size(p), "temp file of an interrupted atomic write")
                      for p in sorted(folder.iterdir())
                      if TEMP_FILE.match(p.name) and p.is_file() and not p.is_symlink() and _old(p, now, min_age_s)]
    return sorted(found, key=lambda r: str(r.path))


def _staging(layout: RunLayout, now: float, min_age_s: float) -> list[Path]:
    """Step 1's left-over staging folders: none while the data stage runs in a live process or job."""
    data = layout.data_dir
    if not (data.is_dir() and _inside(data, layout.root)) or _live_stages(layout) & {"data"}:
        return []
    return [p for p in sorted(data.iterdir()) if p.name.startswith(STAGING) and not p.is_symlink()
            and _old(p, now, min_age_s)]


def _temp_folders(run: RunLayout, top: Path) -> list[Path]:
    """The folders of one run (or fold) where its atomic writes put temp files, less those of a stage
    running in a live process or job, and less any folder that is a link or leads out of the run."""
    live = _live_stages(run)
    folders = [run.root] + ([] if "data" in live else [run.data_dir, run.splits_dir, run.cache_dir])
    folders += [run.ckpt_dir(s) for s in MODEL_STAGES if s not in live]
    folders += [run.log_dir(s) for s in STAGES if s not in live]
    return [f for f in folders if f.is_dir() and _inside(f, top)]


def _live_stages(run: RunLayout) -> set[str]:
    """The stages the record says are running (or about to) in a process or job not shown to be gone."""
    if not run.progress.is_file():
        return set()
    records = ProgressFile.for_run(run).read().stages
    return {stage for stage, record in records.items()
            if record.status in ("running", "pending") and lease.holder_alive(record)}


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


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
