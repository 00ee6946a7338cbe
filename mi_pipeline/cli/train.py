"""Run one stage (what a job executes); run it again after a crash and it continues from last.pth.

``python -m mi_pipeline.train --stage STAGE [--config C] [--run-dir RUN]``

submit runs this for every stage it plans (as a local process or a SLURM job); run it by hand to train
one stage. The stage's files are RUN/checkpoints/<stage>/ (last.pth, best_model.pth) and
RUN/logs/<stage>/ (train.log, metrics.jsonl). SIGUSR2, SIGTERM or Ctrl-C make the stage save its exact
position and exit with status 75; running the same command again continues from there.
Exit status: 0 done; 2 bad config or input (one error line); 75 stopped, resumable.
"""

from __future__ import annotations

import argparse

from mi_pipeline.cli.common import (
    add_run_options,
    command_parser,
    exit_process,
    load_run_config,
    run_main,
)
from mi_pipeline.cli.helptext import full_help
from mi_pipeline.graph import STAGES
from mi_pipeline.layout import RunLayout


def main(argv: list[str] | None = None) -> int:
    parser = full_help(command_parser("train", __doc__), __doc__)
    parser.add_argument("--stage", required=True, choices=STAGES,
                        help="the stage to run: data (step 1), then motion, registration, segmentation")
    add_run_options(parser)
    parser.add_argument("--force", action="store_true", help="resume even if the config or upstream models changed")
    parser.add_argument("--restart", action="store_true", help="train from scratch (the old last.pth is kept aside)")
    parser.add_argument("--restart-token", default=None, help=argparse.SUPPRESS)  # set by the executors
    parser.add_argument("--on-upstream-change", choices=("error", "restart"), default="error",
                        help="when last.pth was trained on older upstream models (default: error)")
    args = parser.parse_args(argv)
    cfg = load_run_config(args)
    layout = RunLayout(args.run_dir.resolve())
    from mi_pipeline.orchestration.stage_runner import train_stage  # torch: after --help and a bad config

    return train_stage(args.stage, cfg, layout, force=args.force, restart=args.restart,
                       restart_token=args.restart_token, on_upstream_change=args.on_upstream_change)


if __name__ == "__main__":
    exit_process(run_main(main))
