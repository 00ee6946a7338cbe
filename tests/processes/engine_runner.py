"""A stage run for fault injection: the toy task (tests/engine/toy_task.py) through the real engine.

What is real: ``mi_pipeline.engine.trainer.fit`` (checkpoints, resume, RNG), ``mi_pipeline.train.StopFlag``
(the SIGTERM / SIGUSR2 / SIGINT handler every stage job installs), ``StageLog`` and the locked progress
record (updated every epoch, as a stage job does). What is not: the model is the engine tests' toy
regression instead of a MONAI network, so hundreds of kill/resume trials fit in CI time.

usage: python engine_runner.py RUN_DIR EPOCHS [SLEEP_PER_BATCH_S]
exit 0 when trained, 75 when a signal stopped it with its position saved (as mi_pipeline.train).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from toy_task import ToyTask  # noqa: E402

from mi_pipeline.config import OptimConfig  # noqa: E402
from mi_pipeline.engine.determinism import setup_determinism  # noqa: E402
from mi_pipeline.engine.runlog import StageLog  # noqa: E402
from mi_pipeline.engine.trainer import FitContext, Interrupted, fit  # noqa: E402
from mi_pipeline.orchestration.progress import ProgressFile  # noqa: E402
from mi_pipeline.orchestration.stage_runner import EXIT_INTERRUPTED, StopFlag  # noqa: E402

STAGE = "motion"  # the progress-record entry the toy run keeps up to date
STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR2, signal.SIGINT}


def ckpt_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "toy"


def run(run_dir: Path, epochs: int, sleep_s: float = 0.0) -> int:
    run_dir = Path(run_dir)
    log = StageLog(run_dir / "logs" / "toy", "toy")
    stop = StopFlag()
    stop.install(log)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # the zygote forks us with them blocked
    device = torch.device("cpu")
    setup_determinism(seed=7, threads=1, deterministic=True, device=device)
    progress = ProgressFile(run_dir)
    progress.update_stage(STAGE, status="running", epochs=epochs)

    def on_epoch(state, metrics) -> None:  # type: ignore[no-untyped-def]
        progress.update_stage(STAGE, epoch=state.epoch, best_metric=state.best_metric, metric_name="neg_mse")

    ctx = FitContext(ckpt_dir=ckpt_dir(run_dir), log=log, seed=7, config_hash="toyhash", config={"toy": True},
                     device=device, stop_requested=stop, on_epoch=on_epoch)
    optim = OptimConfig(epochs=epochs, batch_size=8, lr=1e-2, lr_schedule="cosine")
    try:
        state = fit(ToyTask(sleep_s=sleep_s), optim, ctx)
    except Interrupted as exc:
        progress.update_stage(STAGE, status="failed", epoch=exc.state.epoch, note=f"interrupted by {stop.signal_name}")
        return EXIT_INTERRUPTED
    progress.update_stage(STAGE, status="done", epoch=state.epoch)
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0))
