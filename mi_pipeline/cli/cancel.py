"""Cancel the run's pending and running SLURM jobs, and record it."""

from __future__ import annotations

from mi_pipeline.cli.common import (
    add_run_dir_option,
    command_parser,
    exit_process,
    run_main,
)
from mi_pipeline.orchestration.progress import ProgressFile
from mi_pipeline.orchestration.slurm_executor import cancel_jobs


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("cancel", __doc__)
    add_run_dir_option(parser)
    args = parser.parse_args(argv)
    root = args.run_dir.resolve()
    cancelled = cancel_jobs(ProgressFile(root), "cancel command", root / "logs" / "slurm")
    print(f"cancelled: {' '.join(cancelled)}" if cancelled else "no pending or running jobs for this run")
    return 0


if __name__ == "__main__":
    exit_process(run_main(main))
