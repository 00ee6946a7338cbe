"""A tiny, cardiology-free TrainTask for engine tests (the engine must not need anything more)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mi_pipeline.config import OptimConfig, PerformanceConfig
from mi_pipeline.engine.runlog import StageLog
from mi_pipeline.engine.task import Batch, TrainTask
from mi_pipeline.engine.trainer import FitContext, TrainState, fit


class ToyTask(TrainTask):
    """Regression with dropout and noisy augmentation, so every RNG path is exercised."""

    name = "toy"
    metric_name = "neg_mse"

    def __init__(self, samples: int = 64, sleep_s: float = 0.0) -> None:
        self.samples = samples
        self.sleep_s = sleep_s

    def setup(self, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.x = torch.randn(self.samples, 8, generator=generator)
        self.y = self.x @ torch.randn(8, 1, generator=generator) + 0.1

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def num_train_samples(self) -> int:
        return self.samples

    def make_batch(self, indices: list[int], generator: torch.Generator, device: torch.device) -> Batch:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        x = self.x[indices]
        return {"x": x + 0.01 * torch.randn(x.shape, generator=generator), "y": self.y[indices]}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
        return loss, {"mse": loss.detach()}

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"neg_mse": -nn.functional.mse_loss(model(self.x), self.y).item()}


class ConvToyTask(ToyTask):
    """The same, with 2D images and convolutions (B, C, H, W): what channels_last changes.

    Dropout draws its mask in memory order, so channels_last drops other units: compare trajectories
    across memory formats with ``dropout=0``.
    """

    name = "convtoy"

    def __init__(self, samples: int = 64, sleep_s: float = 0.0, dropout: float = 0.2) -> None:
        super().__init__(samples, sleep_s)
        self.dropout = dropout

    def setup(self, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.x = torch.randn(self.samples, 2, 12, 12, generator=generator)
        self.y = self.x.mean(dim=(1, 2, 3)).unsqueeze(1) * 3.0 + 0.1

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Dropout(self.dropout), nn.Conv2d(8, 4, 3, padding=1),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"neg_mse": -nn.functional.mse_loss(model(self.x.to(device)), self.y.to(device)).item()}


def fit_toy(run_dir: Path, task: TrainTask, optim: OptimConfig,
            stop_requested: Callable[[], bool] | None = None) -> TrainState:
    """``fit`` a toy task under ``run_dir`` as the engine tests do: one CPU thread, synchronous checkpoints."""
    ctx = FitContext(ckpt_dir=run_dir / "checkpoints" / "toy", log=StageLog(run_dir / "logs" / "toy", "toy"), seed=7,
                     config_hash="toyhash", config={}, device=torch.device("cpu"),
                     performance=PerformanceConfig(async_checkpoint=False),
                     stop_requested=stop_requested or (lambda: False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(task, optim, ctx)
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    """Run a toy task through the real engine with performance switches, in its own process.

    usage: python toy_task.py RUN_DIR EPOCHS [--conv [--dropout P]] [--sleep S] [--signal-after N] [--kill-after N]
                              [--set performance.KEY=VALUE ...]
    ``--signal-after N`` sends SIGUSR2 to the whole process group (workers included, as SLURM may) at
    the N-th stop check (one per batch, one per epoch end): a deterministic mid-epoch stop.
    ``--kill-after N`` sends itself SIGKILL at the N-th stop check, 0.5 s later (a background write
    handed over before then is on disk: the toy's files are a few kB): a deterministic kill -9.
    Exit 75 when stopped with the position saved, 2 with a one-line error (as mi_pipeline.train).
    """
    import argparse
    import os
    import signal
    import sys
    from pathlib import Path

    from mi_pipeline.config import OptimConfig, load_config
    from mi_pipeline.engine.determinism import setup_determinism
    from mi_pipeline.engine.runlog import StageLog
    from mi_pipeline.engine.trainer import FitContext, Interrupted, fit
    from mi_pipeline.errors import UserError
    from mi_pipeline.orchestration.stage_runner import EXIT_INTERRUPTED, StopFlag

    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("epochs", type=int)
    parser.add_argument("--conv", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--signal-after", type=int, default=0)
    parser.add_argument("--kill-after", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    log = StageLog(args.run_dir / "logs" / "toy", "toy")
    try:
        perf = load_config(None, args.overrides).performance
        stop = StopFlag()
        stop.install(log)
        checks = {"n": 0}

        def stop_requested() -> bool:
            checks["n"] += 1
            if checks["n"] == args.kill_after:
                time.sleep(0.5)
                os.kill(os.getpid(), signal.SIGKILL)
            if checks["n"] == args.signal_after:
                os.killpg(os.getpgrp(), signal.SIGUSR2)
                deadline = time.monotonic() + 10
                while not stop() and time.monotonic() < deadline:
                    time.sleep(0.001)  # the handler runs between bytecodes of this thread
            return stop()

        setup_determinism(seed=7, threads=1, deterministic=True, device=device)
        ctx = FitContext(ckpt_dir=args.run_dir / "checkpoints" / "toy", log=log, seed=7, config_hash="toyhash",
                         config={"toy": True}, device=device, performance=perf, stop_requested=stop_requested)
        optim = OptimConfig(epochs=args.epochs, batch_size=8, lr=1e-2, lr_schedule="cosine")
        task = ConvToyTask(sleep_s=args.sleep, dropout=args.dropout) if args.conv else ToyTask(sleep_s=args.sleep)
        fit(task, optim, ctx)
    except Interrupted:
        return EXIT_INTERRUPTED
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
