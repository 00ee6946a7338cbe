"""Run one stage in this process and keep the progress record right: what every job executes.

``python -m mi_pipeline.train``, the local executor's child processes and the SLURM stage jobs all
end up in :func:`train_stage`.

Run again after a crash and it continues from ``last.pth``. It keeps the progress record up to date
(running -> done / failed) and turns SIGUSR2 / SIGTERM / Ctrl-C into "save the exact position, stop".
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback

import torch

from mi_pipeline.config import (
    Config,
    config_changes,
    only_longer_training,
    stage_hash,
    to_dict,
)
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.determinism import pick_device, setup_determinism
from mi_pipeline.engine.distributed import World, device_for, init_world, shutdown
from mi_pipeline.engine.runlog import StageLog
from mi_pipeline.engine.trainer import FitContext, Interrupted, fit, set_aside
from mi_pipeline.errors import CheckpointError, UserError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.health import rebuild_records
from mi_pipeline.orchestration.progress import ProgressFile, now
from mi_pipeline.stages.graph import UPSTREAM

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
                restart_token: str | None = None, on_upstream_change: str = "error", stop: StopFlag | None = None,
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
    world = init_world(device)
    device = device_for(world, device)
    try:
        return _train_stage(stage, cfg, layout, world, device, force=force, restart=restart,
                            restart_token=restart_token, on_upstream_change=on_upstream_change,
                            stop=stop or StopFlag(), interrupted_status=interrupted_status)
    finally:
        shutdown(world)


def _train_stage(stage: str, cfg: Config, layout: RunLayout, world: World, device: torch.device, *, force: bool,
                 restart: bool, restart_token: str | None, on_upstream_change: str, stop: StopFlag,
                 interrupted_status: str) -> int:
    log = StageLog(layout.log_dir(stage), stage, files=world.is_main,
                   prefix=f" rank {world.rank}" if world.distributed else "")
    progress = ProgressFile(layout.root, inspect_disk=lambda: rebuild_records(layout))
    update = StageRecorder(progress, stage, enabled=world.is_main)
    # Rank 0 alone reads the files and decides (another rank could otherwise look at last.pth while
    # rank 0 moves it aside); the others learn the outcome, an error included, from the collective.
    problem: str | None = None
    upstream: dict[str, str] = {}
    if world.is_main:
        try:
            restart = _decide_restart(stage, layout, progress, restart, restart_token, log)
            upstream = _upstream_fingerprints(stage, layout)
            restart = restart or _stale_against_upstream(stage, layout, upstream, on_upstream_change, force, log)
            if restart:
                _forget_epochs(progress, stage, layout)
        except UserError as exc:
            _mark_failed(update, log, str(exc))
            problem = str(exc)
            if not world.distributed:
                raise
    if world.any(problem is not None):
        if problem is not None:
            raise UserError(problem)
        raise UserError(f"{stage}: rank 0 refused to start (see {log.train_log})")
    restart = world.any(restart)
    if not world.is_main:
        upstream = _upstream_fingerprints(stage, layout)
    record = progress.read().stages[stage]
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)  # requeues SLURM did itself count too
    update(status="running", attempts=record.attempts + 1, pid=os.getpid(), requeues=max(record.requeues, restarts),
           executor="slurm" if os.environ.get("SLURM_JOB_ID") else "local", host=socket.gethostname(),
           job_id=os.environ.get("SLURM_JOB_ID"), log=str(log.train_log), started=now(), finished=None, error=None)
    log.info(f"starting {stage} (attempt {record.attempts + 1}, pid {os.getpid()}, config {stage_hash(cfg, stage)})")
    stop.install(log)
    try:
        setup_determinism(cfg.seed, cfg.threads, cfg.deterministic, device)
        if stage == "data":
            return _run_data(cfg, layout, update, log, world)
        return _run_model_stage(stage, cfg, layout, update, log, device, world, upstream, stop, force, restart)
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


def _run_data(cfg: Config, layout: RunLayout, update: StageRecorder, log: StageLog, world: World) -> int:
    from mi_pipeline.data.prepare import prepare_data

    if world.is_main:  # one writer for the cache; other ranks wait for it
        if cfg.cv.folds:  # a changed split seed or K stops here, before the cache and splits are rewritten
            from mi_pipeline.data.folds import check_settings

            check_settings(layout.root, cfg.cv.folds, cfg.data.split_seed)
        summary = prepare_data(cfg, layout.root, log=log.info)
        log.info(f"data prepared: {summary}")
        if cfg.cv.folds:  # the split file and fold folders, before any fold job can start (issue 15)
            from mi_pipeline.orchestration.fold_setup import prepare_folds

            prepare_folds(cfg, layout)
            log.info(f"data: {cfg.cv.folds} folds in {layout.folds_dir}")
    world.barrier()
    update(status="done", finished=now(), pid=None, error=None, note=None)
    return 0


def _run_model_stage(stage: str, cfg: Config, layout: RunLayout, update: StageRecorder, log: StageLog,
                     device: torch.device, world: World, upstream: dict[str, str], stop: StopFlag, force: bool,
                     restart: bool) -> int:
    from mi_pipeline.stages.registry import make_task

    optim = getattr(cfg, stage)
    task = make_task(stage, cfg, layout.root)

    def on_epoch(state, metrics: dict[str, float]) -> None:
        update(epoch=state.epoch, epochs=optim.epochs, best_metric=state.best_metric, metric_name=task.metric_name)

    more_epochs = _only_more_epochs(stage, cfg, layout)
    if more_epochs:
        log.info(f"only epoch counts changed ({stage}.epochs is {optim.epochs}): continuing from last.pth (the "
                 f"learning-rate schedule is recomputed for the new total)")
    ctx = FitContext(ckpt_dir=layout.ckpt_dir(stage), log=log, seed=cfg.seed, config_hash=stage_hash(cfg, stage),
                     accept_config_change=more_epochs,
                     config=to_dict(cfg), device=device, upstream=upstream, restart=restart, force=force,
                     world=world, performance=cfg.performance, stop_requested=stop, on_epoch=on_epoch)
    state = fit(task, optim, ctx)
    update(status="done", epoch=state.epoch, epochs=optim.epochs, best_metric=state.best_metric,
           metric_name=task.metric_name, finished=now(), pid=None, error=None, note=None)
    log.info(f"{stage} done: best {task.metric_name}={state.best_metric} at epoch {state.best_epoch}")
    return 0


def _only_more_epochs(stage: str, cfg: Config, layout: RunLayout) -> bool:
    """True when the stage's checkpoints were made under this config but for epoch counts (its own raised)."""
    if not layout.last(stage).exists() or not layout.best(stage).exists():
        return False
    try:
        last = ckpt.load_checkpoint(layout.last(stage), required=("config_hash",))
        best = ckpt.load_checkpoint(layout.best(stage), required=("config_hash", "config"))
    except CheckpointError:
        return False  # the trainer reports an unreadable file itself
    if last["config_hash"] == stage_hash(cfg, stage) or last["config_hash"] != best["config_hash"]:
        return False
    return only_longer_training(config_changes(best["config"], cfg, stage), stage)


def _mark_failed(update: StageRecorder, log: StageLog, message: str) -> None:
    log.info(f"FAILED: {message}")
    update(status="failed", error=message, finished=now(), pid=None, log=str(log.train_log))


def _decide_restart(stage: str, layout: RunLayout, progress: ProgressFile, restart: bool,
                    restart_token: str | None, log: StageLog) -> bool:
    """Whether this attempt trains from scratch: asked now, or a planned restart not yet carried out.

    A planned restart's token is taken out of the record here, under its lock, and the old
    ``last.pth`` is set aside *before* that, so a crash in between repeats the set-aside (harmless:
    the file is gone) rather than losing the restart.
    """
    if restart_token is not None:
        with progress.update() as record:
            entry = record.stages[stage]
            if entry.restart_token == restart_token:
                if stage != "data":
                    set_aside(layout.last(stage), "restart")
                entry.restart_token, entry.epoch = None, 0
                log.info(f"planned restart ({restart_token}): training {stage} from scratch")
                return True
        log.info(f"restart {restart_token} was already carried out (this is a requeue): continuing")
    if not restart:
        _check_not_lost(stage, layout, progress.read().stages[stage].epoch)
    return restart


def _forget_epochs(progress: ProgressFile, stage: str, layout: RunLayout) -> None:
    """A restart starts the record's count again at once, so a crash before the first new epoch
    does not look like lost work to the next attempt."""
    if stage != "data" and layout.last(stage).exists():
        set_aside(layout.last(stage), "restart")
    progress.update_stage(stage, epoch=0)


def _check_not_lost(stage: str, layout: RunLayout, recorded_epoch: int) -> None:
    """Progress without a checkpoint means lost work: say so instead of silently starting over."""
    if stage != "data" and recorded_epoch > 0 and not layout.last(stage).exists():
        raise CheckpointError(
            f"{layout.last(stage)}: missing, but the progress record says {stage} reached epoch {recorded_epoch}; "
            f"refusing to start over silently (restore the file, or train with --restart)")


def _upstream_fingerprints(stage: str, layout: RunLayout) -> dict[str, str]:
    prints = {}
    for up in UPSTREAM[stage]:
        if up == "data":
            continue
        if not layout.best(up).is_file():
            raise CheckpointError(f"{layout.best(up)}: missing; {stage} needs the trained {up} model (run {up} first)")
        prints[up] = ckpt.file_fingerprint(layout.best(up))
    return prints


def _stale_against_upstream(stage: str, layout: RunLayout, upstream: dict[str, str], policy: str,
                            force: bool, log: StageLog) -> bool:
    """True when last.pth was trained on other upstream models and the policy says restart."""
    if not upstream or force or not layout.last(stage).exists():
        return False
    try:
        recorded = ckpt.load_checkpoint(layout.last(stage), required=("model",)).get("upstream", {})
    except CheckpointError:
        return False  # the trainer reports the unreadable file itself
    if recorded == upstream or policy != "restart":
        return False
    kept = set_aside(layout.last(stage), "stale")
    log.info(f"last.pth was trained on older upstream models ({', '.join(sorted(upstream))}): "
             f"restarting {stage} from scratch (old file kept as {kept.name if kept else '-'})")
    return True
