"""Step 1: validate every input, preprocess, and publish the cache in one move.

Why this order: a bad file anywhere must stop the step before anything is published, and a crash
must never leave a cache that looks complete. So every subject is validated and preprocessed into
a staging folder beside ``data/cache``; only when all succeed is the staging folder renamed into
place, then the splits are written, then the manifest -- last, because readers trust the cache
only when the manifest is there and its hash matches the config.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mi_pipeline import config as config_mod
from mi_pipeline.config import Config, PhantomConfig
from mi_pipeline.data import adapters, cache, generic, phantom
from mi_pipeline.data.cache import data_is_prepared  # noqa: F401  (callers import it from here too)
from mi_pipeline.data.parallel import prepare_subjects
from mi_pipeline.engine.runlog import Progress
from mi_pipeline.errors import ConfigError, InputError
from mi_pipeline.fsio import fsync_dir, remove_stale_temps


def dataset_root(cfg: Config, run_dir: Path) -> Path:
    """Where the raw data is: ``data.root``, or ``<run>/data/phantom`` for the default phantom."""
    if cfg.data.root:
        return Path(cfg.data.root).expanduser()
    if cfg.data.format == "phantom":
        return Path(run_dir) / "data" / "phantom"
    raise ConfigError(f"data.root: empty; set it to the dataset folder (data.format is {cfg.data.format})")


def _phantom_complete(root: Path, params: PhantomConfig) -> bool:
    try:
        marker = json.loads((root / phantom.MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker != phantom.marker_content(params):
        return False
    return all((root / sid / name).is_file() for sid in marker["subjects"] for name in generic.REQUIRED)


def ensure_phantom(params: PhantomConfig, root: Path, *, owned: bool, log: Callable[[str], None]) -> None:
    """Generate the phantom into ``root`` unless it is already there, complete, for the same params.

    Generation goes to a staging folder that is renamed into place, so an interrupted run never
    leaves a half-written dataset. A folder we did not create (``owned`` False, no marker) that
    has other content is refused rather than overwritten.
    """
    if _phantom_complete(root, params):
        log(f"data: phantom already in {root} ({params.subjects} subjects)")
        return
    if root.exists() and any(root.iterdir()):
        if not owned and not (root / phantom.MARKER).exists():
            raise InputError(f"{root}: not empty and not a phantom folder; refusing to overwrite it "
                             f"(empty data.root to use <run>/data/phantom)")
    log(f"data: generating phantom ({params.subjects} subjects, seed {params.seed}) into {root}")
    staging = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        phantom.generate_dataset(staging, params)
        if root.exists():
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging, root)
        fsync_dir(root.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_splits(ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Split by subject, deterministic for ``seed``; >=1 train and >=1 val when there are >=2 subjects."""
    order = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(order))
    shuffled = [order[i] for i in perm]
    n = len(shuffled)
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    if n >= 2:
        n_val = max(n_val, 1)
        n_test = min(n_test, n - n_val - 1)
    else:
        n_val, n_test = 0, 0
    return {
        "val": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val:n_val + n_test]),
        "train": sorted(shuffled[n_val + n_test:]),
    }


def _clean_stale(data_dir: Path) -> None:
    if data_dir.is_dir():
        for entry in data_dir.iterdir():
            if entry.name.startswith((".cache.tmp-", ".cache.old-")):
                shutil.rmtree(entry, ignore_errors=True)
        # temp files of a step 1 killed while writing the manifest or the splits (step 1 has one writer)
        remove_stale_temps(cache.cache_dir(data_dir.parent) / "manifest.json")
        for name in cache.SPLITS:
            remove_stale_temps(cache.splits_dir(data_dir.parent) / f"{name}.txt")
        remove_stale_temps(cache.excluded_path(data_dir.parent))


def prepare_data(cfg: Config, run_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run step 1 and return a summary (subjects per split, shapes, seconds)."""
    start = time.monotonic()
    run_dir = Path(run_dir)
    root = dataset_root(cfg, run_dir)
    if cfg.data.format == "phantom":
        ensure_phantom(cfg.data.phantom, root, owned=not cfg.data.root, log=log)
    found = adapters.list_subjects(cfg.data.format, root)
    log(f"data: {len(found)} subject(s) in {root}")
    excluded = _configured_exclusions(cfg, found, root)
    todo = [sid for sid in found if sid not in excluded]

    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale(data_dir)
    staging = data_dir / f".cache.tmp-{uuid.uuid4().hex[:8]}"  # staging/data/cache is the new cache
    try:
        bar = Progress(len(todo), "data: preparing", log, unit="subject(s)")
        try:
            outcomes = prepare_subjects(cfg, root, todo, staging, done=bar.update)
        finally:
            bar.close()
        bad = {o.id: o.error for o in outcomes if o.error}
        for o in outcomes:  # in subject order, whatever the worker count
            if o.error:
                log(f"data: error: {o.error}")
            elif o.warning:
                log(f"data: warning: {o.warning}")
        if bad and cfg.data.on_bad_subject == "stop":
            names = list(bad)
            more = (f" (and {len(names) - 1} more bad subject(s): {', '.join(names[1:])}; listed above)"
                    if len(names) > 1 else "")
            raise InputError(bad[names[0]] + more + "; set data.on_bad_subject: exclude to go on without them")
        for sid, error in bad.items():
            log(f"data: excluding {sid} (data.on_bad_subject: exclude)")
            excluded[sid] = error
        ids = [o.id for o in outcomes if not o.error]
        if not ids:
            raise InputError(f"{root}: all {len(found)} subject(s) excluded (data.exclude, data.on_bad_subject); "
                             f"nothing to prepare")
        new_cache, target = cache.cache_dir(staging), cache.cache_dir(run_dir)
        if target.exists():
            old = data_dir / f".cache.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(new_cache, target)
        fsync_dir(data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    splits = make_splits(ids, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    if len(ids) < 2:
        log("data: warning: only one subject; it goes to train and there is no validation subject")
    cache.write_splits(run_dir, splits)
    cache.write_exclusions(run_dir, excluded)
    cache.write_manifest(run_dir, ids, data_hash=config_mod.stage_hash(cfg, "data"),
                         lge_subjects=sum(1 for o in outcomes if not o.error and o.lge_shape),
                         cine_label_subjects=sum(1 for o in outcomes if not o.error and o.cine_labels))
    seconds = round(time.monotonic() - start, 2)
    good = next(o for o in outcomes if not o.error)
    summary = {
        "subjects": len(ids),
        "excluded": len(excluded),
        **{f"n_{name}": len(splits[name]) for name in cache.SPLITS},
        "cine_shape": list(good.cine_shape),
        "lge_shape": list(good.lge_shape),
        "root": str(root),
        "seconds": seconds,
    }
    dropped = f"; {len(excluded)} excluded (data/splits/excluded.json)" if excluded else ""
    split = (f"train {summary['n_train']}, val {summary['n_val']}, test {summary['n_test']}" if not cfg.cv.folds else
             f"test {summary['n_test']} held out, {summary['n_train'] + summary['n_val']} for {cfg.cv.folds}-fold "
             f"cross-validation")
    log(f"data: prepared {len(ids)} subject(s) ({split}){dropped}, cine (Z, T, H, W) = "
        f"{tuple(summary['cine_shape'])} in {seconds} s")
    return summary


def _configured_exclusions(cfg: Config, found: list[str], root: Path) -> dict[str, str]:
    unknown = sorted(set(cfg.data.exclude) - set(found))
    if unknown:
        raise ConfigError(f"data.exclude: {', '.join(unknown)} not among the subjects in {root}")
    return {sid: "listed in data.exclude" for sid in cfg.data.exclude}


