"""Where a run stands: state, per-stage detail (epoch, best metric, SLURM job) and recent trouble.

``python -m mi_pipeline.status --run-dir RUN [--json] [--plot]``

Reads the run's record (.training_progress) and checks it against what is really there: the
checkpoints, live local processes and, where SLURM is available, the jobs it lists. On a k-fold run the
folds are shown too. --plot writes logs/<stage>/curves.png per trained stage: training loss, each
validation figure beside its baseline and the learning rate over epochs, with the best epoch and the
validation metric that chose it marked. Exit status: 0; 2 when the run directory does not exist.
"""

from __future__ import annotations

import json
import sys

from mi_pipeline.cli.common import (
    add_run_dir_option,
    command_parser,
    exit_process,
    run_main,
)
from mi_pipeline.cli.helptext import full_help
from mi_pipeline.errors import UserError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.status_report import collect, render


def main(argv: list[str] | None = None) -> int:
    parser = full_help(command_parser("status", __doc__), __doc__)
    add_run_dir_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--plot", action="store_true",
                        help="also write logs/<stage>/curves.png (training curves from metrics.jsonl)")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        raise UserError(f"{args.run_dir}: no such run directory (give the run root with --run-dir)")
    report = collect(RunLayout(args.run_dir.resolve()))
    print(json.dumps(report, indent=1) if args.json else render(report))
    if args.plot:
        from mi_pipeline.orchestration.curves import (
            plot_run,  # matplotlib only when asked
        )

        for path in plot_run(RunLayout(args.run_dir.resolve())):
            print(f"curves: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    exit_process(run_main(main))
