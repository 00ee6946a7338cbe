"""A k-fold run's folders: the split file applied, one run directory per fold.

A fold is an ordinary run directory (``layout.RunLayout.fold``): its own record with the seed's
states, checkpoints and logs, and a ``data/`` whose split lists are the fold's and whose cache is a
link to the run's one cache. The data stage calls ``prepare_folds`` when it finishes, ``submit``
before it plans; ``orchestration/submission.py`` plans and runs the folds.
"""

from __future__ import annotations

import os

from mi_pipeline.config import Config
from mi_pipeline.data import cache
from mi_pipeline.data import folds as split_file
from mi_pipeline.errors import UserError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.progress import ProgressFile

SHARED_DATA = "shared data stage (run top)"


def fold_layouts(cfg: Config, top: RunLayout) -> list[RunLayout]:
    return [top.fold(k) for k in range(cfg.cv.folds)]


def existing_folds(top: RunLayout) -> list[RunLayout]:
    """The folds the run's split file lists (what ``status``, ``cancel``, ``predict`` and ``evaluate`` see)."""
    return [RunLayout(root) for root in split_file.fold_roots(top.root)]


def check_fold(fold: int | None, count: int, where: str) -> None:
    """A ``--fold`` argument against the folds there are: one error line when it is out of range."""
    if fold is None:
        return
    if count == 0:
        raise UserError(f"--fold {fold}: {where} has no folds (cv.folds is 0)")
    if not 0 <= fold < count:
        raise UserError(f"--fold {fold}: out of range, {where} has folds 0..{count - 1}")


def prepare_folds(cfg: Config, top: RunLayout) -> list[RunLayout]:
    """Make (or check) the split file and each fold's folder; needs the data stage done at the top.

    Per fold: ``data/splits`` from the split file, ``data/cache`` a relative link to the top cache,
    and the fold record's data step done (it is the top's). Idempotent: run by the data stage when it
    finishes and by ``submit`` before it plans, so a run whose data was prepared before ``cv.folds``
    was set gets its folds too.
    """
    manifest = cache.read_manifest(top.root)
    if manifest is None:
        raise UserError(f"{cache.cache_dir(top.root)}: the data stage has not run; folds are made after it")
    content = split_file.ensure_folds(top.root, list(manifest["subjects"]), cache.read_split(top.root, "test"),
                                      cfg.cv.folds, cfg.data.split_seed)
    layouts = fold_layouts(cfg, top)
    for k, fold in enumerate(layouts):
        splits = split_file.fold_splits(content, k)
        if any(not _has_split(fold, n) or cache.read_split(fold.root, n) != splits[n] for n in cache.SPLITS):
            cache.write_splits(fold.root, splits)
        _link_cache(fold, top)
        records = ProgressFile.for_run(fold)
        if records.read().stages["data"].status != "done":
            records.update_stage("data", status="done", note=f"{SHARED_DATA}; fold {k} of {split_file.FILENAME}",
                                 error=None)
    return layouts


def _has_split(fold: RunLayout, name: str) -> bool:
    return (cache.splits_dir(fold.root) / f"{name}.txt").is_file()


def _link_cache(fold: RunLayout, top: RunLayout) -> None:
    link = cache.cache_dir(fold.root)
    target = os.path.relpath(cache.cache_dir(top.root), link.parent)
    if link.is_symlink() and os.readlink(link) == target:
        return
    if link.exists() and not link.is_symlink():
        raise UserError(f"{link}: a folder, but a fold's data/cache must be the run's shared cache; remove it")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".cache.link-{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)  # atomic: a fold job never sees the link missing
