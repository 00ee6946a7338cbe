"""Run one stage in this process and keep the progress record right: what every job executes.

``python -m mi_pipeline.train``, the local executor's child processes and the SLURM stage jobs all
end up in :func:`train_stage`.

Run again after a crash and it continues from ``last.pth``. It keeps the progress record up to date
(running -> done / failed) and turns SIGUSR2 / SIGTERM / Ctrl-C into "save the exact position, stop".
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback

import torch

from mi_pipeline import graph
from mi_pipeline.config import Config, stage_hash, to_dict
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.determinism import pick_device, setup_determinism
from mi_pipeline.engine.distributed import World, device_for, process_group
from mi_pipeline.engine.runlog import StageLog
from mi_pipeline.engine.trainer import (
    RESUME_KEYS,
    FitContext,
    Interrupted,
    StartFrom,
    TrainState,
    chosen_metric_name,
    fit,
    set_aside,
)
from mi_pipeline.errors import CheckpointError, UserError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration import lease
from mi_pipeline.orchestration.progress import ProgressFile, now
from mi_pipeline.orchestration.resume import ResumeDecision, UpstreamPolicy, decide

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped on request with its position saved; run again to continue


class StopFlag:
    """Set by a signal; read by the training loop between batches."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __call__(self) -> bool:
        return self.signal_name is not None

    def install(self, log: StageLog) -> None:
        def handler(signum: int, _frame: object) -> None:
            name = signal.Signals(signum).name
            if self.signal_name is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal_name = name
            log.info(f"received {name}: will save the exact position and stop after this batch")

        for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)


class StageRecorder:
    """Updates one stage's entry in the progress record; a no-op on data-parallel ranks other than 0."""

    def __init__(self, progress: ProgressFile, stage: str, enabled: bool) -> None:
        self.progress, self.stage, self.enabled = progress, stage, enabled

    def __call__(self, **changes: object) -> None:
        if self.enabled:
            self.progress.update_stage(self.stage, **changes)


def train_stage(stage: str, cfg: Config, layout: RunLayout, *, force: bool = False, restart: bool = False,
                restart_token: str | None = None, on_upstream_change: UpstreamPolicy = "error", stop: StopFlag | None = None,
                interrupted_status: str = "failed") -> int:
    """Run one stage and keep the record right; returns the process exit status.

    ``restart`` (the user's ``train --restart``) trains from scratch now. ``restart_token`` is how a
    *planned* restart reaches a job: the submitter recorded the token in the stage's record, and the
    first attempt that finds it there restarts and clears it in the same locked update. A job that
    SLURM requeues by itself runs again with its original arguments -- the same token -- but the
    record no longer holds it, so it continues from ``last.pth`` instead of starting over each time.

    ``interrupted_status`` is what the record says after a signal stopped training with its position
    saved: "failed" for a local process (someone must resume it), "pending" for a SLURM job that is
    about to be requeued. Under torchrun / a multi-task SLURM job every rank calls this; rank 0
    alone writes the record, logs and checkpoints.
    """
    if stage == "data" and layout.fold_index is not None:  # before the fold's record is touched
        raise UserError(f"{layout.root}: the data stage of a k-fold run runs at the run top "
                        f"({layout.top.root}), not in a fold")
    device = pick_device(cfg.device)
    with process_group(device) as world:
        return _train_stage(stage, cfg, layout, world, device_for(world, device), force=force, restart=restart,
                            restart_token=restart_token, on_upstream_change=on_upstream_change,
                            stop=stop or StopFlag(), interrupted_status=interrupted_status)


def _train_stage(stage: str, cfg: Config, layout: RunLayout, world: World, device: torch.device, *, force: bool,
                 restart: bool, restart_token: str | None, on_upstream_change: UpstreamPolicy, stop: StopFlag,
                 interrupted_status: str) -> int:
    log = StageLog(layout.log_dir(stage), stage, files=world.is_main,
                   prefix=(f" rank {world.rank}" if world.distributed else "")
                   + (f" fold {layout.fold_index}" if layout.fold_index is not None else ""))
    progress = ProgressFile.for_run(layout)
    update = StageRecorder(progress, stage, enabled=world.is_main)
    holder = lease.Holder.me()
    # Rank 0 alone takes the lease, reads the files and decides (another rank could otherwise look at
    # last.pth while rank 0 moves it aside); the others learn the outcome, an error included, from
    # the collective. A refused lease leaves the record to its holder: nothing here is marked failed.
    problem: str | None = None
    decision = ResumeDecision(False, None)
    upstream: dict[str, str] = {}
    if world.is_main:
        try:
            before = lease.take(progress, stage, holder, str(log.train_log))
        except UserError as exc:
            if not world.distributed:
                raise
            before, problem = None, str(exc)
        if before is not None:
            log.info(f"starting {stage} (attempt {before.attempts + 1}, pid {os.getpid()}, "
                     f"config {stage_hash(cfg, stage)})")
            try:
                restart = _take_restart_token(stage, layout, progress, restart, restart_token, log)
                if stage != "data":
                    upstream = _upstream_fingerprints(stage, cfg, layout)
                    decision = decide(stage, cfg, layout, restart=restart, recorded_epoch=before.epoch,
                                      upstream=upstream, on_upstream_change=on_upstream_change, force=force)
                    for note in decision.notes:
                        log.info(note)
                    if decision.restart:  # the count starts again at once: a crash now is not lost work
                        progress.update_stage(stage, epoch=0)
            except UserError as exc:
                _mark_failed(update, log, str(exc))
                problem = str(exc)
                if not world.distributed:
                    raise
    if world.any(problem is not None):
        if problem is not None:
            raise UserError(problem)
        raise UserError(f"{stage}: rank 0 refused to start (see {log.train_log})")
    if not world.is_main and stage != "data":
        upstream = _upstream_fingerprints(stage, cfg, layout)
        decision = _follow_rank0(layout, stage)
    decision = ResumeDecision(world.any(decision.restart), decision.payload, decision.accept_config_change)
    stop.install(log)
    try:
        with lease.Heartbeat(progress, stage, holder) if world.is_main else contextlib.nullcontext():
            setup_determinism(cfg.seed, cfg.threads, cfg.deterministic, device)
            if stage == "data":
                return _run_data(cfg, layout, update, log, world)
            return _run_model_stage(stage, cfg, layout, update, log, device, world, upstream, stop, force, decision)
    except Interrupted as exc:
        message = f"interrupted by {stop.signal_name} at epoch {exc.state.epoch + 1}; resume continues from there"
        update(status=interrupted_status, epoch=exc.state.epoch, pid=None,
               error=message if interrupted_status == "failed" else None, note=message)
        log.info(message)
        return EXIT_INTERRUPTED
    except UserError as exc:
        _mark_failed(update, log, str(exc))
        raise
    except Exception as exc:  # a bug or a numerical failure: full trace in the log, one line at the end
        if world.is_main:
            with open(log.train_log, "a", encoding="utf-8") as handle:
                traceback.print_exc(file=handle)
        _mark_failed(update, log, f"{type(exc).__name__}: {exc}")
        print(f"error: {stage} failed: {type(exc).__name__}: {exc} (traceback in {log.train_log})", file=sys.stderr)
        return 1


def _follow_rank0(layout: RunLayout, stage: str) -> ResumeDecision:
    """A data-parallel rank other than 0 starts where rank 0 decided: from last.pth when rank 0 kept
    one (it has set aside any it restarts from), else from epoch 1."""
    if not layout.last(stage).exists():
        return ResumeDecision(False, None)
    return ResumeDecision(False, ckpt.load_checkpoint(layout.last(stage), required=RESUME_KEYS),
                          accept_config_change=True)


def _run_data(cfg: Config, layout: RunLayout, update: StageRecorder, log: StageLog, world: World) -> int:
    from mi_pipeline.data.prepare import prepare_data

    if world.is_main:  # one writer for the cache; other ranks wait for it
        if cfg.cv.folds:  # a changed split seed or K stops here, before the cache and splits are rewritten
            from mi_pipeline.data.folds import check_settings

            check_settings(layout.root, cfg.cv.folds, cfg.data.split_seed)
        summary = prepare_data(cfg, layout.root, log=log.info)
        log.info(f"data prepared: {summary}")
        if cfg.cv.folds:  # the split file and fold folders, before any fold job can start
            from mi_pipeline.data.cache import read_split
            from mi_pipeline.orchestration.fold_setup import prepare_folds

            for fold in prepare_folds(cfg, layout):
                sizes = ", ".join(f"{name} {len(read_split(fold.root, name))}" for name in ("train", "val", "test"))
                log.info(f"data: fold {fold.fold_index} ({sizes}) in {fold.root}")
    world.barrier()
    update(status="done", finished=now(), pid=None, error=None, note=None)
    return 0


def _run_model_stage(stage: str, cfg: Config, layout: RunLayout, update: StageRecorder, log: StageLog,
                     device: torch.device, world: World, upstream: dict[str, str], stop: StopFlag, force: bool,
                     decision: ResumeDecision) -> int:
    from mi_pipeline.stages.registry import make_task

    optim = getattr(cfg, stage)
    task = make_task(stage, cfg, layout.root)
    chosen_by = chosen_metric_name(task.metric_name, optim.best_window)

    def on_epoch(state: TrainState, metrics: dict[str, float]) -> None:
        update(epoch=state.epoch, epochs=optim.epochs, best_metric=state.best_metric, metric_name=chosen_by)

    ctx = FitContext(ckpt_dir=layout.ckpt_dir(stage), log=log, seed=cfg.seed, config_hash=stage_hash(cfg, stage),
                     accept_config_change=decision.accept_config_change,
                     config=to_dict(cfg), device=device, upstream=upstream, restart=decision.restart, force=force,
                     world=world, performance=cfg.performance, stop_requested=stop, on_epoch=on_epoch,
                     start_from=StartFrom(decision.payload))
    state = fit(task, optim, ctx)
    update(status="done", epoch=state.epoch, epochs=optim.epochs, best_metric=state.best_metric,
           metric_name=chosen_by, finished=now(), pid=None, error=None, note=None)
    log.info(f"{stage} done: best {chosen_by}={state.best_metric} at epoch {state.best_epoch}")
    return 0


def _mark_failed(update: StageRecorder, log: StageLog, message: str) -> None:
    log.info(f"FAILED: {message}")
    update(status="failed", error=message, finished=now(), pid=None, log=str(log.train_log))


def _take_restart_token(stage: str, layout: RunLayout, progress: ProgressFile, restart: bool,
                        restart_token: str | None, log: StageLog) -> bool:
    """Whether this attempt trains from scratch: asked now, or a planned restart not yet carried out.

    A planned restart's token is taken out of the record here, under its lock, and the old
    ``last.pth`` is set aside *before* that, so a crash in between repeats the set-aside (harmless:
    the file is gone) rather than losing the restart.
    """
    if restart_token is None:
        return restart
    with progress.update() as record:
        entry = record.stages[stage]
        if entry.restart_token == restart_token:
            if stage != "data":
                set_aside(layout.last(stage), "restart")
            entry.restart_token, entry.epoch = None, 0
            log.info(f"planned restart ({restart_token}): training {stage} from scratch")
            return True
    log.info(f"restart {restart_token} was already carried out (this is a requeue): continuing")
    return restart


def _upstream_fingerprints(stage: str, cfg: Config, layout: RunLayout) -> dict[str, str]:
    """The trained upstream models this stage reads, by fingerprint; a stage the data left out (no LGE:
    registration) is no upstream, as the plan has it."""
    from mi_pipeline.data.cache import cine_labels_available, lge_available

    omitted = graph.left_out(lge_available(cfg, layout.root), cine_labels_available(cfg, layout.root))
    prints = {}
    for up in graph.upstream(stage, omitted):
        if up == "data":
            continue
        if not layout.best(up).is_file():
            raise CheckpointError(f"{layout.best(up)}: missing; {stage} needs the trained {up} model (run {up} first)")
        prints[up] = ckpt.file_fingerprint(layout.best(up))
    return prints
