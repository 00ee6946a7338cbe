"""What the slurm/ sbatch wrappers ask: the plan, recording job ids and states, requeue decisions.

    python -m mi_pipeline chain plan CONFIG RUN_DIR [--fold k]    (a k-fold run: fold k's chain)
    python -m mi_pipeline chain record-jobs RUN_DIR NOTE STAGE=JOB_ID...
    python -m mi_pipeline chain record RUN_DIR STAGE KEY=VALUE...      (an empty value means none)
    python -m mi_pipeline chain may-requeue CONFIG RUN_DIR STAGE       (exit 0: requeue; 1: do not)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mi_pipeline.cli.common import command_parser, exit_process, run_main
from mi_pipeline.cli.helptext import full_help
from mi_pipeline.config import load_config
from mi_pipeline.orchestration import chain


def _pairs(items: list[str]) -> dict[str, str | None]:
    return {key: value or None for key, _, value in (item.partition("=") for item in items)}


def main(argv: list[str] | None = None) -> int:
    parser = full_help(command_parser("chain", __doc__), __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="print the stages to run, one per line (the wrappers submit them)")
    p.add_argument("config", type=Path, help="YAML config")
    p.add_argument("run_dir", type=Path, help="run root")
    p.add_argument("--fold", type=int, default=None, help="k-fold run: fold k's chain")
    p = sub.add_parser("record-jobs", help="record the SLURM job id of each stage")
    p.add_argument("run_dir", type=Path, help="run root")
    p.add_argument("note", help="why (kept in the record)")
    p.add_argument("jobs", nargs="+", metavar="STAGE=JOB_ID")
    p = sub.add_parser("record", help="set fields of a stage's record (an empty value means none)")
    p.add_argument("run_dir", type=Path, help="run root")
    p.add_argument("stage", help="the stage whose record changes")
    p.add_argument("changes", nargs="*", metavar="KEY=VALUE")
    p = sub.add_parser("may-requeue", help="exit 0 when the stage may be requeued, 1 when not (cap reached)")
    p.add_argument("config", type=Path, help="YAML config (slurm.max_requeues; env MAX_REQUEUES overrides)")
    p.add_argument("run_dir", type=Path, help="run root")
    p.add_argument("stage", help="the stage asking")
    args = parser.parse_args(argv)
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    root = args.run_dir.resolve()
    if args.command == "plan":
        print("\n".join(chain.plan_lines(load_config(args.config), root, args.fold)))
    elif args.command == "record-jobs":
        chain.record_jobs(root, args.note, {k: v for k, v in _pairs(args.jobs).items() if v})
    elif args.command == "record":
        chain.record_stage(root, args.stage, _pairs(args.changes))
    else:
        cap = load_config(args.config).slurm.max_requeues
        if os.environ.get("MAX_REQUEUES"):  # the wrapper's documented override
            cap = int(os.environ["MAX_REQUEUES"])
        allowed, message = chain.requeue_allowed(root, args.stage, cap)
        print(message)
        return 0 if allowed else 1
    return 0


if __name__ == "__main__":
    exit_process(run_main(main))
