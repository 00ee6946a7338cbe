"""One training run of one tool, in its own process: ``python -m benchmarks.peers.worker --tool T ...``.

Writes ``<out>/result-<n>.json`` when training ends (n counts the processes that trained into
``out``): the timestamps of every loss call and validation, the threads torch used, where it resumed
from, the checkpoint files and the SHA-256 of the final weights. With ``--freeze-after N`` it writes
``--marker`` after exactly N optimizer steps and waits there to be killed (``kill -9`` from the
parent). With ``--stop-on-signal`` (ours, in a SLURM job) USR2 / TERM make our engine save its exact
position and the worker asks SLURM to requeue the job, as the pipeline's job wrapper does.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the heavy imports: start-up is part of what is measured

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.peers.data import StampedTask, num_batches, weights_sha256
from benchmarks.peers.syncs import SyncCounter
from benchmarks.peers.tools import STAGE, TOOLS, TRAIN
from mi_pipeline.config import load_config
from mi_pipeline.engine.determinism import setup_determinism
from mi_pipeline.engine.trainer import Interrupted
from mi_pipeline.stages.registry import make_task

EXIT_REQUEUED = 75


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.worker")
    parser.add_argument("--tool", choices=TOOLS, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--data-run", type=Path, required=True, help="run directory holding the prepared cache")
    parser.add_argument("--out", type=Path, required=True, help="this tool's checkpoints and results")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--freeze-after", type=int, help="after this many steps: write --marker, wait to be killed")
    parser.add_argument("--marker", type=Path)
    parser.add_argument("--slurm", action="store_true", help="Lightning: SLURMEnvironment auto-requeue on USR1")
    parser.add_argument("--trace", action="store_true", help="append one line per step to <out>/steps.log")
    parser.add_argument("--stop-on-signal", action="store_true", help="ours: USR2/TERM save the position, requeue")
    return parser.parse_args(argv)


def checkpoint_files(folder: Path | None) -> dict[str, int]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    device = torch.device("cpu")
    setup_determinism(cfg.seed, cfg.threads, cfg.deterministic, device)
    args.out.mkdir(parents=True, exist_ok=True)
    signalled: list[str] = []
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if args.stop_on_signal:
        release = lambda: bool(signalled)
    elif args.slurm:  # Lightning's own handler ran: its hpc checkpoint is there
        release = lambda: any(args.out.glob("hpc_ckpt_*.ckpt"))
    else:
        release = lambda: False
    counter = SyncCounter().install()
    task = StampedTask(make_task(STAGE, cfg, args.data_run), freeze_after=args.freeze_after if restarts == 0 else None,
                       marker=args.marker, release=release, trace=args.out / "steps.log" if args.trace else None,
                       syncs=lambda: counter.count)
    task.setup(device)
    extra: dict[str, object] = {"slurm": args.slurm}
    if args.stop_on_signal:
        def handler(signum: int, _frame: object) -> None:
            signalled.append(signal.Signals(signum).name)
            print(f"worker: received {signalled[-1]} at {time.time():.3f}", file=sys.stderr, flush=True)

        for sig in (signal.SIGUSR2, signal.SIGTERM):
            signal.signal(sig, handler)
        extra["stop"] = lambda: bool(signalled)
    index = len(list(args.out.glob("result-*.json")))
    record: dict[str, object] = {"tool": args.tool, "process": index, "pid": os.getpid(), "started": STARTED,
                                 "slurm_job": os.environ.get("SLURM_JOB_ID"),
                                 "slurm_restart_count": restarts,
                                 "epochs": args.epochs, "batches_per_epoch": num_batches(task, cfg.motion.batch_size)}
    status = 0
    try:
        result = TRAIN[args.tool](task, cfg, args.out, args.epochs, device, **extra)
        record["weights_sha256"] = weights_sha256(result["model"])
        record["resumed_from"] = result["resumed_from"]
        record["checkpoint_files"] = checkpoint_files(result.get("ckpt_dir"))
    except Interrupted:  # ours, stopped by a signal: position saved; ask SLURM to requeue, as our jobs do
        record["interrupted"] = {"signal": signalled[0], "at": time.time()}
        job = os.environ.get("SLURM_JOB_ID")
        if job:
            subprocess.run(["scontrol", "requeue", job], check=False)
        status = EXIT_REQUEUED
    record.update({"finished": time.time(), "losses": task.losses, "syncs": task.syncs, "validations": task.validations,
                   "saves": task.saves, "writes": task.writes,
                   "threads": task.threads[0] if task.threads else None})
    temp = args.out / f".result-{index}.json.tmp"
    temp.write_text(json.dumps(record) + "\n")
    os.replace(temp, args.out / f"result-{index}.json")
    return status


if __name__ == "__main__":
    status = main()
    gc.freeze()  # as our commands exit (mi_pipeline.cli.exit_process): no last GC walk over torch (1-5 s)
    sys.exit(status)
