"""Step 1's per-subject work (read, validate, preprocess, write to staging), on one or many processes.

Why its own module: a worker process imports only this and what it needs, and the result of a
subject depends on nothing but (config, subject), so the cache is byte-for-byte the same for any
``data.workers``. Outcomes come back in subject order; the arrays never travel between processes
(each worker writes its subject's file into the staging folder itself).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mi_pipeline.config import Config
from mi_pipeline.data import adapters, cache
from mi_pipeline.data.preprocess import on_outer_ring, preprocess_subject
from mi_pipeline.errors import UserError


@dataclass(frozen=True)
class Outcome:
    """What happened to one subject: an error line, or its shapes (and a warning line, if any)."""

    id: str
    error: str | None = None
    warning: str | None = None
    cine_shape: tuple[int, ...] = ()
    lge_shape: tuple[int, ...] = ()
    cine_labels: bool = False  # the cached subject has cine labels (counted in the manifest)


def prepare_subjects(cfg: Config, root: Path, ids: list[str], staging: Path,
                     done: Callable[[], None] = lambda: None) -> list[Outcome]:
    """Prepare ``ids`` into ``staging`` with up to ``cfg.data.workers`` processes; outcomes in ``ids`` order.
    ``done`` is called as each subject's outcome arrives (progress).

    Every subject is validated even after a failure, so one run names every bad subject. With one
    worker and ``on_bad_subject: stop``, subjects after the first failure are only read (the run is
    doomed, so no preprocessing is wasted on them).
    """
    # never more processes than CPUs this job may use (a SLURM allocation, a taskset): more only thrash
    workers = min(cfg.data.workers, max(len(ids), 1), len(os.sched_getaffinity(0)))
    if workers == 1:
        outcomes: list[Outcome] = []
        for sid in ids:
            doomed = cfg.data.on_bad_subject == "stop" and any(o.error for o in outcomes)
            outcomes.append(prepare_one(cfg, root, sid, staging, validate_only=doomed))
            done()
        return outcomes
    # spawn: the parent may hold torch's thread pools, which do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunk = max(1, len(ids) // (workers * 8))
        outcomes = []
        for outcome in pool.map(_prepare_star, [(cfg, root, sid, staging) for sid in ids], chunksize=chunk):
            outcomes.append(outcome)
            done()
        return outcomes


def _prepare_star(args: tuple[Config, Path, str, Path]) -> Outcome:
    return prepare_one(*args)


def prepare_one(cfg: Config, root: Path, sid: str, staging: Path, *, validate_only: bool = False) -> Outcome:
    """Read, check and preprocess one subject, then write it into ``staging``'s cache."""
    try:
        raw = adapters.load_subject(cfg.data.format, root, sid)
        if validate_only:
            return Outcome(sid)
        subject = preprocess_subject(raw, cfg.data)
    except UserError as exc:
        return Outcome(sid, error=str(exc))
    warning = None
    if _touches_border(subject):
        warning = (f"{sid}: labelled myocardium reaches the border of its {cfg.data.crop * float(subject.spacing[0]):.0f} mm "
                   f"crop; the heart may go on beyond it")
    cache.save_subject(staging, subject)
    return Outcome(sid, warning=warning, cine_shape=tuple(subject.cine.shape),
                   lge_shape=tuple(subject.lge.shape) if subject.lge is not None else (),
                   cine_labels=subject.cine_label is not None)


def _touches_border(subject: cache.Subject) -> bool:
    label = subject.cine_label[:, 0] if subject.cine_label is not None else subject.lge_label
    if label is None:
        return False
    return on_outer_ring(np.isin(label, (2, 3)))
