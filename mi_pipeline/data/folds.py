"""The k-fold split file ``data/splits/folds.json``: written once, then only checked.

Like nnU-Net's ``splits_final.json``: a list of ``{"train": [...], "val": [...]}``, one per fold,
by subject (patient), so no subject's images are ever on both sides. The held-out test subjects are
exactly the run's ``data/splits/test.txt`` (``prepare.make_splits`` with the same fractions and
seed); the other subjects are dealt into K folds, each fold's validation subjects are the ones its
models never train on. Beside the folds the file records what made it (split seed, subjects, K):
a later config or dataset that would give another split is an error that says so, never a silent
re-split that would mix one fold's validation subjects into another's training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mi_pipeline.config import load_config
from mi_pipeline.data import cache
from mi_pipeline.errors import ConfigError, InputError
from mi_pipeline.fsio import atomic_write_text
from mi_pipeline.layout import RunLayout

FILENAME = "folds.json"
VERSION = 1


def folds_path(run_dir: Path) -> Path:
    return cache.splits_dir(run_dir) / FILENAME


def fold_roots(run_dir: Path) -> list[Path]:
    """The run's folds (``folds/<k>``), in fold order: the K this split file lists, whether or not their
    folders exist. The one answer every command uses: a copied or left-over folder under ``folds/`` is
    not a fold, and a deleted one is still there, missing.

    Before the data stage has written the split file (a k-fold submission whose data job is still
    queued), the K is the one the run's own ``config.yaml`` plans, so ``status`` and ``cancel`` see the
    folds' queued jobs; [] when neither says the run has folds.
    """
    content = read_folds(run_dir)
    top = RunLayout(Path(run_dir))
    count = len(content["folds"]) if content is not None else _planned_folds(top)
    return [top.fold(k).root for k in range(count)]


def _planned_folds(top: RunLayout) -> int:
    if not top.config_file.is_file():
        return 0
    try:
        return load_config(top.config_file).cv.folds
    except ConfigError:
        return 0  # a damaged config.yaml: the commands that need it say so themselves


def unlisted_folders(run_dir: Path) -> list[Path]:
    """Fold-like folders (``folds/<digits>``) the split file does not list: ignored, and worth a warning
    (a copy of another run's fold would otherwise look like one more model)."""
    folds_dir, listed = RunLayout(Path(run_dir)).folds_dir, set(fold_roots(run_dir))
    if not folds_dir.is_dir():
        return []
    return sorted((p for p in folds_dir.iterdir() if p.is_dir() and p.name.isdigit() and p not in listed),
                  key=lambda p: int(p.name))


def make_folds(ids: list[str], test: list[str], k: int, seed: int) -> list[dict[str, list[str]]]:
    """Deal the non-test subjects into ``k`` folds (deterministic for ``seed``); >= 1 val subject each."""
    pool = sorted(set(ids) - set(test))
    if k > len(pool):
        raise ConfigError(f"cv.folds: {k} folds but only {len(pool)} subject(s) outside the test split; "
                          f"use at most {len(pool)} folds (or lower data.test_fraction)")
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    chunks = [sorted(order[i::k]) for i in range(k)]
    return [{"train": sorted(s for j, c in enumerate(chunks) if j != i for s in c), "val": chunks[i]}
            for i in range(k)]


def read_folds(run_dir: Path) -> dict[str, Any] | None:
    """The split file, or None when there is none (a run without folds, or data not prepared yet)."""
    path = folds_path(run_dir)
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
        if not isinstance(content.get("folds"), list) or not content["folds"]:
            raise ValueError("no folds")
    except (ValueError, AttributeError) as exc:
        raise InputError(f"{path}: unreadable k-fold split file ({exc}); restore it from a backup, or delete it "
                         f"and the folds/ folder to split again") from None
    return content


def ensure_folds(run_dir: Path, ids: list[str], test: list[str], k: int, seed: int) -> dict[str, Any]:
    """Write the split file when absent; when present, check it still describes this data and config.

    Returns its content. Any difference (split seed, subjects, test set, K) is an InputError naming
    the file and what changed.
    """
    path = folds_path(run_dir)
    wanted = {"version": VERSION, "k": k, "split_seed": seed, "subjects": sorted(ids), "test": sorted(test)}
    existing = read_folds(run_dir)
    if existing is None:
        content = {**wanted, "folds": make_folds(ids, test, k, seed)}
        atomic_write_text(path, json.dumps(content, indent=1) + "\n")
        return content
    _check_same(path, existing, wanted)
    return existing


def check_settings(run_dir: Path, k: int, seed: int) -> None:
    """Before anything is (re)prepared: the split file, if any, was made with this K and split seed."""
    existing = read_folds(run_dir)
    if existing is not None:
        _check_same(folds_path(run_dir), existing, {"k": k, "split_seed": seed})


CHECKED = (("k", "cv.folds"), ("split_seed", "data.split_seed"), ("subjects", "the dataset's subjects"),
           ("test", "the test split"))


def _check_same(path: Path, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    for key, what in CHECKED:
        if key in wanted and existing.get(key) != wanted[key]:
            raise InputError(f"{path}: made with {what} = {_short(existing.get(key))}, but now {_short(wanted[key])}; "
                             f"the folds are never re-split silently: restore the setting, or delete {path} "
                             f"and folds/ to start a new cross-validation")


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"{len(value)} subject(s) [{', '.join(value[:3])}{', ...' if len(value) > 3 else ''}]"
    return repr(value)


def fold_splits(content: dict[str, Any], fold: int) -> dict[str, list[str]]:
    """Fold ``fold``'s split in the run's usual train / val / test form."""
    entry = content["folds"][fold]
    return {"train": list(entry["train"]), "val": list(entry["val"]), "test": list(content["test"])}
