"""The four ways to train the motion model: a bare loop, our engine, Lightning, MONAI's trainer.

Each ``train_*`` trains ``epochs`` epochs into ``out`` (resuming from what a previous process left
there, the way that tool resumes), validates every epoch with the task's own ``validate``, and
returns the trained model. The adapters are thin and follow each tool's documented use:

* Lightning: a ``LightningModule`` (``training_step`` returns the task's loss; ``validation_step``
  logs the task's metrics; ``configure_optimizers`` returns AdamW + the per-epoch LambdaLR),
  ``Trainer(max_epochs, accelerator="cpu", devices=1)`` with ``ModelCheckpoint(monitor=<metric>,
  save_top_k=1, save_last=True, every_n_epochs=1)``, resumed with ``fit(ckpt_path="last")`` --
  or, in a SLURM job that Lightning requeued, ``ckpt_path=None`` so that Lightning picks its own
  ``hpc_ckpt_*.ckpt`` (``SLURMEnvironment(auto_requeue=True, requeue_signal=SIGUSR1)``).
  Logger, progress bar, model summary and the sanity validation are off (a batch job needs none of
  them, and each would only slow Lightning down).
* MONAI: ``SupervisedTrainer`` with an ``Inferer`` that returns the task's loss (so its own
  iteration does zero_grad / forward / backward / step and fires its events), ``decollate=False``
  (nothing to post-process), ``optim_set_to_none=True`` (its default False zero-fills every
  gradient and lets backward accumulate into it; PyTorch's own default is True),
  ``LrScheduleHandler(epoch_level=True)``, ``CheckpointSaver(save_dict=
  {net, opt, sched, trainer}, save_interval=1, n_saved=1, save_key_metric=True)``; resumed with
  ``CheckpointLoader`` from the newest ``checkpoint_epoch=N.pt``.
* ours: ``engine.trainer.fit`` with the product's defaults (background checkpoint writes).

Everything else is identical: model and initial weights (``torch.manual_seed(seed)`` right before
``build_model``), batches (``data.EngineOrder``), AdamW, schedule, validation, threads.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.peers.data import StampedTask, engine_order_loader, num_batches
from mi_pipeline.config import Config, OptimConfig, stage_hash, to_dict
from mi_pipeline.engine.trainer import batch_seed, epoch_order, lr_factor

STAGE = "motion"
TOOLS = ("bare", "ours", "lightning", "monai")


def _optimizer(task: StampedTask, model: nn.Module, optim: OptimConfig, epochs: int):
    optimizer = torch.optim.AdamW(task.param_groups(model, optim.lr), weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(optim.lr_schedule, e, epochs))
    return optimizer, scheduler


def _fresh_model(task: StampedTask, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return task.build_model()


# --- the baseline ----------------------------------------------------------------------------


def train_bare(task: StampedTask, cfg: Config, out: Path, epochs: int, device: torch.device, **_: Any) -> dict[str, Any]:
    """A minimal hand-written loop: no checkpoints, no resume (it always starts from scratch)."""
    optim = cfg.motion
    model = _fresh_model(task, cfg.seed).to(device)
    optimizer, scheduler = _optimizer(task, model, optim, epochs)
    nb = num_batches(task, optim.batch_size)
    for epoch in range(epochs):
        model.train()
        order = epoch_order(task.num_train_samples(), cfg.seed, epoch)
        for b in range(nb):
            indices = order[b * optim.batch_size:(b + 1) * optim.batch_size]
            batch = task.make_batch(indices, torch.Generator().manual_seed(batch_seed(cfg.seed, epoch, b)), device)
            loss, _ = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            task.validate(model, device)
        scheduler.step()
    return {"model": model, "resumed_from": None}


# --- ours ------------------------------------------------------------------------------------


def train_ours(task: StampedTask, cfg: Config, out: Path, epochs: int, device: torch.device,
               stop: Callable[[], bool] | None = None, **_: Any) -> dict[str, Any]:
    import dataclasses
    from unittest import mock

    from mi_pipeline.engine import checkpoint as ckpt
    from mi_pipeline.engine import checkpoint_writer, trainer
    from mi_pipeline.engine.runlog import StageLog
    from mi_pipeline.engine.trainer import FitContext, fit

    ckpt_dir = out / "checkpoints"
    resumed = ckpt_dir / ckpt.LAST if (ckpt_dir / ckpt.LAST).exists() else None
    ctx = FitContext(ckpt_dir=ckpt_dir, log=StageLog(out / "logs", STAGE), seed=cfg.seed,
                     config_hash=stage_hash(cfg, STAGE), config=to_dict(cfg), device=device,
                     performance=cfg.performance, stop_requested=stop or (lambda: False))
    # Timing only, engine untouched: the epoch-end checkpoint call (what the loop waits for) and each
    # background write (start -> durable).
    with mock.patch.object(trainer._Saver, "record_epoch", task.timed(trainer._Saver.record_epoch)), \
            mock.patch.object(checkpoint_writer, "write_record", task.timed(checkpoint_writer.write_record,
                                                                            task.writes)):
        fit(task, dataclasses.replace(cfg.motion, epochs=epochs), ctx)  # Interrupted propagates to the worker
    model = task.build_model()
    model.load_state_dict(ckpt.load_checkpoint(ckpt_dir / ckpt.LAST)["model"])
    return {"model": model, "resumed_from": str(resumed) if resumed else None, "ckpt_dir": ckpt_dir}


# --- PyTorch Lightning -----------------------------------------------------------------------


def train_lightning(task: StampedTask, cfg: Config, out: Path, epochs: int, device: torch.device,
                    slurm: bool = False, **_: Any) -> dict[str, Any]:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    from torch.utils.data import DataLoader

    optim = cfg.motion

    class MotionModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _fresh_model(task, cfg.seed)

        def training_step(self, batch, batch_idx):
            loss, _ = task.loss(self.model, batch)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log_dict(task.validate(self.model, self.device), batch_size=1)

        def configure_optimizers(self):
            optimizer, scheduler = _optimizer(task, self.model, optim, epochs)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    ckpt_dir = out / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, monitor=task.metric_name, mode="max" if task.higher_is_better else "min",
                                 save_top_k=1, save_last=True, every_n_epochs=1)
    for hook in ("on_validation_end", "on_train_epoch_end"):  # where ModelCheckpoint saves (timing only)
        setattr(checkpoint, hook, task.timed(getattr(checkpoint, hook)))
    plugins = [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)] if slurm else None
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[checkpoint],
                         default_root_dir=out, plugins=plugins)
    module = MotionModule()
    hpc = sorted(out.glob("hpc_ckpt_*.ckpt"))
    # A requeued SLURM job resumes from Lightning's own hpc checkpoint only with ckpt_path=None.
    ckpt_path = None if (slurm and hpc) else "last"
    resumed = hpc[-1] if (slurm and hpc) else (ckpt_dir / "last.ckpt" if (ckpt_dir / "last.ckpt").exists() else None)
    loader = engine_order_loader(task, cfg.seed, optim.batch_size)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=DataLoader([0], batch_size=None), ckpt_path=ckpt_path)
    return {"model": module.model, "resumed_from": str(resumed) if resumed else None, "ckpt_dir": ckpt_dir}


# --- MONAI SupervisedTrainer (ignite) --------------------------------------------------------


CHECKPOINT_EPOCH = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def newest_monai_checkpoint(ckpt_dir: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in ckpt_dir.glob("*.pt") if (m := CHECKPOINT_EPOCH.search(p.name))]
    return max(found)[1] if found else None


def train_monai(task: StampedTask, cfg: Config, out: Path, epochs: int, device: torch.device, **_: Any) -> dict[str, Any]:
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.handlers import CheckpointLoader, CheckpointSaver, LrScheduleHandler
    from monai.inferers import Inferer

    optim = cfg.motion

    class TaskLoss(Inferer):
        """The 'prediction' is the task's loss (the motion loss needs moving and fixed image)."""

        def __call__(self, inputs, network, *args, **kwargs):
            return task.loss(network, inputs)[0]

    class Validate:
        def attach(self, engine) -> None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

        def __call__(self, engine) -> None:
            engine.network.eval()
            with torch.no_grad():
                engine.state.metrics.update(task.validate(engine.network, device))

    class SetEpoch:
        def __init__(self, sampler) -> None:
            self.sampler = sampler

        def attach(self, engine) -> None:
            engine.add_event_handler(Events.EPOCH_STARTED, self)

        def __call__(self, engine) -> None:
            self.sampler.set_epoch(engine.state.epoch - 1)  # ignite counts epochs from 1

    network = _fresh_model(task, cfg.seed).to(device)
    optimizer, scheduler = _optimizer(task, network, optim, epochs)
    loader = engine_order_loader(task, cfg.seed, optim.batch_size)
    trainer = SupervisedTrainer(
        device=device, max_epochs=epochs, train_data_loader=loader, network=network, optimizer=optimizer,
        loss_function=lambda pred, _target: pred, prepare_batch=lambda batch, *_a, **_k: (batch, None),
        inferer=TaskLoss(), decollate=False, optim_set_to_none=True)
    ckpt_dir = out / "checkpoints"
    save_dict = {"net": network, "opt": optimizer, "sched": scheduler, "trainer": trainer}
    resumed = newest_monai_checkpoint(ckpt_dir) if ckpt_dir.is_dir() else None
    handlers: list[Any] = [SetEpoch(loader.sampler)]
    if resumed is not None:
        handlers.append(CheckpointLoader(load_path=str(resumed), load_dict=save_dict, map_location={"cpu": "cpu"}))
    saver = CheckpointSaver(save_dir=str(ckpt_dir), save_dict=save_dict, save_interval=1, n_saved=1,
                            epoch_level=True, save_key_metric=True, key_metric_name=task.metric_name,
                            key_metric_n_saved=1)
    for hook in ("metrics_completed", "interval_completed"):  # its two EPOCH_COMPLETED handlers (timing only)
        setattr(saver, hook, task.timed(getattr(saver, hook)))
    handlers += [Validate(), LrScheduleHandler(scheduler, print_lr=False, epoch_level=True), saver]
    for handler in handlers:
        handler.attach(trainer)
    trainer.run()
    return {"model": network, "resumed_from": str(resumed) if resumed else None, "ckpt_dir": ckpt_dir}


TRAIN = {"bare": train_bare, "ours": train_ours, "lightning": train_lightning, "monai": train_monai}
