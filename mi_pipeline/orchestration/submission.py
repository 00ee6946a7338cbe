"""The submit use case, once: mode -> clear (fresh) -> plan -> decide -> remember -> run or submit.

``python -m mi_pipeline.submit`` only parses its arguments, asks its questions and prints; everything
it does to a run is here. A run without folds is the simple case of the same code: its plan has one
unit (the run itself); a k-fold run's plan has the top's data step, then one unit per fold.

One submitter per run at a time: the submit lock (``RunLayout.submit_lock``) is held while the run is
cleared, planned and submitted -- and, with the local executor, for as long as its stages run -- so a
second ``submit`` gets one line naming the first instead of starting its own copy of every stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

from filelock import FileLock, Timeout

from mi_pipeline.config import Config, dump_yaml
from mi_pipeline.data.cache import cine_labels_available, data_is_prepared, lge_available
from mi_pipeline.data.folds import check_settings
from mi_pipeline.errors import UserError
from mi_pipeline.fsio import atomic_write_text
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration import jobs, lease
from mi_pipeline.orchestration.fold_setup import SHARED_DATA, check_fold, fold_layouts, prepare_folds
from mi_pipeline.orchestration.local_executor import ExecutorName, StageCommand, run_local
from mi_pipeline.orchestration.pipeline import delete_for_fresh, record_skips, stop_in_flight
from mi_pipeline.orchestration.plan import Step, make_plan
from mi_pipeline.orchestration.progress import ProgressFile
from mi_pipeline.orchestration.records import now

Mode = Literal["fresh", "resume", "skip"]


@dataclass(frozen=True)
class Unit:
    """One run directory's part of a submission: a run without folds, a k-fold run's top (its data
    step), or one fold."""

    layout: RunLayout
    steps: tuple[Step, ...]
    label: str = ""  # "", "top" or "fold k"

    @property
    def progress(self) -> ProgressFile:
        return ProgressFile.for_run(self.layout)


@dataclass(frozen=True)
class RunPlan:
    mode: Mode
    units: tuple[Unit, ...]
    folds: int = 0

    def describe(self) -> list[str]:
        if not self.folds:
            return [step.describe() for step in self.units[0].steps]
        lines = [f"top     {self.units[0].steps[0].describe()}"]
        for unit in self.units[1:]:
            k = unit.layout.fold_index
            lines += [f"fold {k:<2} {step.describe()}" for step in unit.steps if step.stage != "data"]
        return lines

    @property
    def data(self) -> Step:
        return self.units[0].steps[0]

    def fold_steps(self, k: int) -> tuple[Step, ...]:
        return next(unit.steps for unit in self.units[1:] if unit.layout.fold_index == k)

    @property
    def undecided(self) -> list[tuple[Unit, Step]]:
        return [(unit, step) for unit in self.units for step in unit.steps if step.decide]


@dataclass(frozen=True)
class SubmitRequest:
    mode: Mode
    top: RunLayout
    cfg: Config
    command: StageCommand
    executor: ExecutorName
    force: bool = False
    retrain_from: str | None = None
    fold: int | None = None
    dry_run: bool = False


class Executor(Protocol):
    """Turns a plan into processes (local) or jobs (SLURM); returns the command's exit status."""

    def execute(self, plan: RunPlan, command: StageCommand, cfg: Config) -> int: ...


def make_run_plan(mode: Mode, cfg: Config, top: RunLayout, *, retrain_from: str | None = None,
                  force: bool = False, only: int | None = None, data_ready: bool | None = None) -> RunPlan:
    """``make_plan`` on the run, or on the top's data step and then on every fold (or fold ``only``).

    A fold whose data is not ready (data reruns, or the fold folder is not made yet) plans its model
    stages as dependants of a running data step, exactly as a run without folds would.
    """
    data_ready = data_is_prepared(cfg, top.root) if data_ready is None else data_ready
    top_progress = ProgressFile.for_run(top).read()
    lge, cine_labels = lge_available(cfg, top.root), cine_labels_available(cfg, top.root)
    if not cfg.cv.folds:
        steps = make_plan(mode, top, top_progress, data_ready=data_ready, cfg=cfg, retrain_from=retrain_from,
                          force=force, lge=lge, cine_labels=cine_labels)
        return RunPlan(mode, (Unit(top, tuple(steps)),))
    data_mode = "resume" if only is not None and mode == "fresh" else mode  # fresh for one fold keeps the data
    data = make_plan(data_mode, top, top_progress, data_ready=data_ready)[0]
    units = [Unit(top, (data,), "top")]
    for k, fold in enumerate(fold_layouts(cfg, top)):
        if only is not None and k != only:
            continue
        fold_ready = not data.run and data_is_prepared(cfg, fold.root)
        steps = make_plan(mode, fold, ProgressFile.for_run(fold).read(), data_ready=fold_ready, cfg=cfg,
                          retrain_from=retrain_from, force=force, lge=lge, cine_labels=cine_labels)
        units.append(Unit(fold, (Step("data", False, SHARED_DATA), *steps[1:]), f"fold {k}"))
    return RunPlan(mode, tuple(units), cfg.cv.folds)


def submit(request: SubmitRequest, *, confirm: Callable[[list[Path]], bool],
           say: Callable[[str], None] = print) -> int:
    """The whole use case; ``confirm`` asks before mode fresh deletes (the CLI's question)."""
    cfg, top = request.cfg, request.top
    if cfg.cv.folds:
        check_fold(request.fold, cfg.cv.folds, f"cv.folds={cfg.cv.folds}")
        check_settings(top.root, cfg.cv.folds, cfg.data.split_seed)  # before anything is deleted or planned
    elif request.fold is not None:
        raise UserError(f"--fold {request.fold}: this run has no folds (cv.folds is 0; pass --folds K)")
    with (contextlib.nullcontext() if request.dry_run else submit_lock(top)):
        if request.mode == "fresh" and not _clear_for_fresh(request, confirm, say):
            return 1
        if cfg.cv.folds and not request.dry_run and data_is_prepared(cfg, top.root):
            prepare_folds(cfg, top)  # checks the split file first: a changed split seed stops here
        plan = make_run_plan(request.mode, cfg, top, retrain_from=request.retrain_from, force=request.force,
                             only=request.fold)
        folds = f", {cfg.cv.folds} folds" if cfg.cv.folds else ""
        say(f"plan (mode {request.mode}, executor {request.executor}{folds}):")
        for line in plan.describe():
            say(f"  {line}")
        if request.dry_run:
            return 0
        _stop_on_undecided(plan)
        _refuse_live_holders(plan, request.executor)
        remember(top, cfg, request.executor)
        returncode = executor_for(request.executor).execute(plan, request.command, cfg)
        if returncode == 0 and request.executor == "local":
            say(_finished(plan))
        return returncode


def _finished(plan: RunPlan) -> str:
    """The state(s) reached; the seed's states are linear, so a stage the data left out is named beside them
    (a later stage may have trained all the same)."""
    left = sorted({s.stage for unit in plan.units for s in unit.steps if s.left_out})
    beside = f" (left out, the data cannot feed it: {', '.join(left)})" if left else ""
    if not plan.folds:
        return f"pipeline finished: {plan.units[0].progress.read().state}{beside}"
    return "folds finished: " + ", ".join(f"{unit.layout.fold_index} {unit.progress.read().state}"
                                          for unit in plan.units[1:]) + beside


def _clear_for_fresh(request: SubmitRequest, confirm: Callable[[list[Path]], bool],
                     say: Callable[[str], None]) -> bool:
    """Mode fresh: list, confirm, stop in-flight jobs, delete; False when the user said no."""
    top, cfg = request.top, request.cfg
    if cfg.cv.folds:
        chosen = [top.fold(request.fold)] if request.fold is not None else fold_layouts(cfg, top)
        layouts = chosen if request.fold is not None else [top, *chosen]
    else:
        layouts = [top]
    if not confirm([p for layout in layouts for p in layout.fresh_targets()]):
        say("nothing deleted")
        return False
    if request.dry_run:
        return True
    for layout in layouts:
        records = ProgressFile.for_run(layout)
        cancelled = stop_in_flight(records.read(), records, layout.job_dir(cfg.slurm.job_dir))
        if cancelled:
            say(f"cancelled in-flight jobs (and waited until they ended): {' '.join(cancelled)}")
        delete_for_fresh(layout, records)
    return True


def _stop_on_undecided(plan: RunPlan) -> None:
    if not plan.undecided:
        return
    unit, first = plan.undecided[0]
    where = f"{unit.label}: " if unit.label else ""
    raise UserError(f"{where}{first.stage} needs a decision ({first.reason}): pass --force to keep the trained "
                    f"model(s) as they are, or --retrain-from {first.stage} to retrain it and its dependants "
                    f"(old files kept aside)")


def _refuse_live_holders(plan: RunPlan, executor: ExecutorName) -> None:
    """A stage this plan would run that a live process (or, for local runs, a live SLURM job) already
    runs: one line naming it, instead of a second copy of the stage."""
    for unit in plan.units:
        records = unit.progress.read().stages
        running = [records[s.stage] for s in unit.steps if s.run]
        states = jobs.slurm_states_of(running)
        for step in (s for s in unit.steps if s.run):
            record = records[step.stage]
            if record.status not in ("pending", "running"):
                continue
            where = f"{unit.label} " if unit.label else ""
            if record.executor == "slurm" and executor == "local" and jobs.job_active(record, states):
                raise UserError(f"{where}{step.stage}: SLURM job {record.job_id} ({states[record.job_id or '']}) "
                                f"runs it; cancel it first (python -m mi_pipeline.cancel) or submit with "
                                f"--executor slurm, which keeps it")
            if record.executor == "local" and record.pid != os.getpid() and lease.holder_alive(record):
                raise UserError(f"{where}{step.stage} is {record.status} in {lease.describe(record)}; "
                                f"one run, one submitter: wait for it, or stop it (kill -TERM {record.pid})")


def remember(top: RunLayout, cfg: Config, executor: ExecutorName) -> None:
    """The run's own config (later commands without ``--config`` use it) and its executor."""
    text = dump_yaml(cfg)
    try:
        old = top.config_file.read_text(encoding="utf-8")
    except OSError:
        old = None
    if old is None or old.split("\n", 1)[-1] != text:
        top.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(top.config_file, "# this run's config, written by submit; commands without --config use "
                                           "it, --config FILE replaces it\n" + text)
    with ProgressFile.for_run(top).update() as progress:
        progress.executor = executor


@contextlib.contextmanager
def submit_lock(top: RunLayout) -> Iterator[None]:
    """Hold the run's submit lock, or raise UserError naming who holds it."""
    top.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(top.submit_lock), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{top.root}: another submit is working on this run ({_holder(top)}); one submitter per "
                        f"run: wait for it (python -m mi_pipeline.status), or stop it first") from None
    except OSError as exc:
        raise UserError(f"{top.submit_lock}: cannot take the submit lock ({exc.strerror or exc}); "
                        f"is the run directory writable?") from None
    try:
        with contextlib.suppress(OSError):
            atomic_write_text(top.submit_holder, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                             "since": now()}))
        yield
    finally:
        with contextlib.suppress(OSError):
            top.submit_holder.unlink()
        lock.release()


def _holder(top: RunLayout) -> str:
    try:
        info = json.loads(top.submit_holder.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


# --- executors ------------------------------------------------------------------------------


class LocalExecutor:
    """Each stage a child process here, in dependency order; a k-fold run's folds one after another
    (a failed fold is reported and the others still run)."""

    def execute(self, plan: RunPlan, command: StageCommand, cfg: Config) -> int:
        for unit in plan.units:
            record_skips(list(unit.steps), unit.progress)
        first, *folds = plan.units
        returncode = run_local(list(first.steps), replace(command, run_dir=first.layout.root), first.progress)
        if returncode != 0 or not folds:
            return returncode
        if any(s.run for unit in folds for s in unit.steps):
            prepare_folds(cfg, first.layout)
        failed = 0
        for unit in folds:
            if any(s.run for s in unit.steps):
                print(f"==> {unit.label}", flush=True)
                failed = failed or run_local(list(unit.steps), replace(command, run_dir=unit.layout.root),
                                             unit.progress)
        return failed


class SlurmExecutor:
    """One submitit job per step, linked by ``afterok``; a k-fold run's folds all in one submission,
    each waiting on the one data job. All or nothing: a refused sbatch cancels what was submitted."""

    def execute(self, plan: RunPlan, command: StageCommand, cfg: Config) -> int:
        from mi_pipeline.orchestration.slurm_executor import (
            SubmitBatch,
            cancel_stale_jobs,
            run_slurm,
            say_cancelled,
        )

        for unit in plan.units:
            record_skips(list(unit.steps), unit.progress)
        say_cancelled(cancel_stale_jobs([(list(unit.steps), unit.progress) for unit in plan.units]))
        batch = SubmitBatch()
        first, *folds = plan.units
        jobs_of = run_slurm(list(first.steps), replace(command, run_dir=first.layout.root), first.progress, cfg,
                            batch=batch)
        upstream = {"data": jobs_of["data"]} if "data" in jobs_of else {}  # no data job: the folds exist already
        for unit in folds:
            unit.layout.root.mkdir(parents=True, exist_ok=True)
            print(f"{unit.label}:")
            run_slurm(list(unit.steps), replace(command, run_dir=unit.layout.root), unit.progress, cfg, batch=batch,
                      upstream_jobs=upstream)
        return 0


def executor_for(name: ExecutorName) -> Executor:
    return SlurmExecutor() if name == "slurm" else LocalExecutor()
