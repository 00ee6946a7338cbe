"""``python -m mi_pipeline.cancel``: cancel the run's pending/running SLURM jobs and record it."""

from __future__ import annotations

import sys
from pathlib import Path

from mi_pipeline.cli import command_parser, exit_process, run_main
from mi_pipeline.progress import ProgressFile
from mi_pipeline.slurm_executor import cancel_jobs


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("cancel", __doc__)
    parser.add_argument("--run-dir", type=Path, default=Path("."), help="run root (default: current directory)")
    args = parser.parse_args(argv)
    cancelled = cancel_jobs(ProgressFile(args.run_dir.resolve()), "cancel command")
    print(f"cancelled: {' '.join(cancelled)}" if cancelled else "no pending or running jobs for this run")
    return 0


if __name__ == "__main__":
    exit_process(run_main(main))
