"""CPU seconds the everyday commands take to answer, on a run with trained checkpoints.

    python benchmarks/cli_startup.py [--repeats 5] [--package-path DIR]

``--package-path`` runs the commands of another checkout (an older version, for a before/after
table) on the same run directory. Each command runs ``--repeats`` times; the table shows the median
user+system CPU seconds of the command's process (CPU, not wall time: a busy login node stretches
wall time, not the work a command does) and the largest. Target: at most 0.5 s each.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    ("status", ["-m", "mi_pipeline.status", "--run-dir", "{run}"]),
    ("status --json", ["-m", "mi_pipeline.status", "--run-dir", "{run}", "--json"]),
    ("cancel", ["-m", "mi_pipeline.cancel", "--run-dir", "{run}"]),
    ("submit --dry-run", ["-m", "mi_pipeline.submit", "--run-dir", "{run}", "--dry-run", "--mode", "resume",
                          "--executor", "local"]),
    ("submit --help", ["-m", "mi_pipeline.submit", "--help"]),
    ("train --help", ["-m", "mi_pipeline.train", "--help"]),
    ("predict --help", ["-m", "mi_pipeline.predict", "--help"]),
    ("evaluate --help", ["-m", "mi_pipeline.evaluate", "--help"]),
    ("clean --help", ["-m", "mi_pipeline.clean", "--help"]),
]


def make_run(root: Path) -> None:
    """Three trained stages' checkpoints of realistic size (a few MB of weights each)."""
    import torch

    sys.path.insert(0, str(REPO))
    from mi_pipeline.engine.checkpoint import save_checkpoint
    from mi_pipeline.layout import RunLayout

    layout = RunLayout(root)
    for stage in ("motion", "registration", "segmentation"):
        weights = {f"layer{i}": torch.randn(256, 256) for i in range(8)}
        save_checkpoint(layout.best(stage), {"model": weights, "config_hash": "h", "metric": 0.5, "epoch": 10})
        save_checkpoint(layout.last(stage), {"model": weights, "optimizer": {"state": {}}, "state": {"epoch": 10},
                                             "finished": True, "config_hash": "h"})


def cpu_seconds(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, *argv], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--package-path", type=Path, default=REPO, help="checkout whose commands to time")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.package_path.resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        make_run(run)
        print(f"package: {args.package_path.resolve()}  repeats: {args.repeats}")
        print(f"{'command':20} {'median CPU s':>13} {'max CPU s':>10}")
        for name, template in COMMANDS:
            argv = [part.format(run=run) for part in template]
            times = [cpu_seconds(argv, env, args.package_path.resolve()) for _ in range(args.repeats)]
            print(f"{name:20} {statistics.median(times):13.2f} {max(times):10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
