"""Cancel the run's pending and running SLURM jobs, and record it (on a k-fold run: every fold, or --fold k).

``python -m mi_pipeline.cancel --run-dir RUN [--fold k]``

The jobs are those the run's record lists; each stage whose job is cancelled is recorded as failed
("job N cancelled"), so ``submit --mode resume`` later continues it from its last checkpoint. Local
runs are stopped with Ctrl-C.
"""

from __future__ import annotations

from mi_pipeline.cli.common import (
    add_run_dir_option,
    command_parser,
    exit_process,
    run_main,
)
from mi_pipeline.cli.helptext import full_help
from mi_pipeline.config import load_config
from mi_pipeline.layout import DEFAULT_JOB_DIR, RunLayout
from mi_pipeline.orchestration.fold_setup import check_fold, existing_folds
from mi_pipeline.orchestration.jobs import cancel_jobs
from mi_pipeline.orchestration.progress import ProgressFile


def main(argv: list[str] | None = None) -> int:
    parser = full_help(command_parser("cancel", __doc__), __doc__)
    add_run_dir_option(parser)
    parser.add_argument("--fold", type=int, default=None, metavar="k", help="k-fold run: cancel fold k's jobs only")
    args = parser.parse_args(argv)
    top = RunLayout(args.run_dir.resolve())
    folds = existing_folds(top)
    check_fold(args.fold, len(folds), str(top.root))
    targets = [top.fold(args.fold)] if args.fold is not None else [top, *folds]
    job_dir = load_config(top.config_file).slurm.job_dir if top.config_file.is_file() else DEFAULT_JOB_DIR
    cancelled = [job for layout in targets
                 for job in cancel_jobs(ProgressFile.for_run(layout), "cancel command", layout.job_dir(job_dir))]
    print(f"cancelled: {' '.join(cancelled)}" if cancelled else "no pending or running jobs for this run")
    return 0


if __name__ == "__main__":
    exit_process(run_main(main))
