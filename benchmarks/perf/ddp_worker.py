"""One rank of the DDP scaling measurement (run by ``torchrun --module``; see ``benchmarks/perf/scaling.py``).

Every rank runs the real engine on the motion task of the trained run, on its shard of each global
batch, and stops after the timed steps; rank 0 writes the steady-state step time as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.perf.probe import ProbedTask, run_engine
from mi_pipeline.config import load_config
from mi_pipeline.engine.determinism import setup_determinism
from mi_pipeline.engine.distributed import process_group
from mi_pipeline.stages.registry import make_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.ddp_worker")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    device = torch.device("cpu")
    with process_group(device) as world:
        setup_determinism(cfg.seed, args.threads, cfg.deterministic, device)
        probe = ProbedTask(make_task("motion", cfg, args.run_dir))
        folder = args.folder / f"rank{world.rank}"  # each rank clears only its own scratch folder
        times = run_engine(probe, cfg.motion, folder, device, cfg.seed, args.warmup, args.steps, world=world)
    if world.is_main:
        args.out.write_text(json.dumps({"step_s": times.step_s, "world_size": world.size, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
