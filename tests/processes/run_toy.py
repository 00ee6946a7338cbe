"""Run the toy task through the real engine in its own process (killed and resumed by tests).

usage: python run_toy.py RUN_DIR EPOCHS [SLEEP_PER_BATCH_S] [CONFIG_HASH] [EMA_DECAY]
Exit 75 when stopped by a signal with its position saved (as mi_pipeline.train does).
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
from mi_pipeline.engine.distributed import process_group  # noqa: E402
from mi_pipeline.engine.runlog import StageLog  # noqa: E402
from mi_pipeline.engine.trainer import FitContext, Interrupted, fit  # noqa: E402


def main() -> int:
    run_dir, epochs = Path(sys.argv[1]), int(sys.argv[2])
    sleep_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    config_hash = sys.argv[4] if len(sys.argv) > 4 else "toyhash"
    ema_decay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    stop = {"flag": False}
    signal.signal(signal.SIGUSR2, lambda *_: stop.__setitem__("flag", True))
    with process_group(torch.device("cpu")) as world:  # torchrun sets RANK/WORLD_SIZE for data-parallel runs
        setup_determinism(seed=7, threads=1, deterministic=True, device=torch.device("cpu"))
        log = StageLog(run_dir / "logs" / "toy", "toy", files=world.is_main)
        ctx = FitContext(ckpt_dir=run_dir / "checkpoints" / "toy", log=log, seed=7, config_hash=config_hash,
                         config={"toy": True}, device=torch.device("cpu"), world=world,
                         stop_requested=lambda: stop["flag"])
        optim = OptimConfig(epochs=epochs, batch_size=8, lr=1e-2, lr_schedule="cosine", ema_decay=ema_decay)
        try:
            fit(ToyTask(sleep_s=sleep_s), optim, ctx)
        except Interrupted:
            return 75
    return 0


if __name__ == "__main__":
    sys.exit(main())
