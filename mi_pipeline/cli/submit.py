"""Run the pipeline: choose a mode (fresh / resume / skip), plan, then run locally or submit to SLURM.

Without ``--mode`` on a terminal it shows the seed guide's menu; without a terminal it refuses,
so a batch job never blocks on input.
"""

from __future__ import annotations

import sys

from mi_pipeline.cli.common import (
    add_run_options,
    command_parser,
    exit_process,
    load_run_config,
    run_main,
)
from mi_pipeline.data.prepare import data_is_prepared
from mi_pipeline.errors import UserError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.health import inspect_stage, rebuild_records
from mi_pipeline.orchestration.local_executor import StageCommand, resolve_executor
from mi_pipeline.orchestration.pipeline import (
    delete_for_fresh,
    execute,
    stop_in_flight,
)
from mi_pipeline.orchestration.plan import MODES, Step, make_plan
from mi_pipeline.orchestration.progress import Progress, ProgressFile
from mi_pipeline.stages.graph import MODEL_STAGES

MODEL_NAMES = {"motion": "运动估计模型 (motion)", "registration": "配准模型 (registration)",
               "segmentation": "分割模型 (segmentation)"}
MENU = """请选择训练模式 (choose a mode):
  1) 从头开始训练 fresh  - clear all progress and models, start at step 1
  2) 断点续训     resume - continue where the last run stopped (mid-stage too)
  3) 智能跳过     skip   - skip models whose best_model.pth exists, train the rest
  4) 退出         quit
"""


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("submit", __doc__)
    parser.add_argument("--mode", choices=MODES, help="fresh | resume | skip (default: ask on a terminal)")
    add_run_options(parser)
    parser.add_argument("--executor", choices=("auto", "local", "slurm"), default="auto",
                        help="auto = SLURM when sbatch is on PATH, else local processes")
    parser.add_argument("--yes", action="store_true", help="do not ask before deleting (mode fresh)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument("--force", action="store_true",
                        help="resume even where the config changed (finished stages are kept as trained)")
    parser.add_argument("--retrain-from", choices=MODEL_STAGES, default=None, metavar="STAGE",
                        help="retrain STAGE and every stage after it (the seed's 'restart from a step'; mode resume)")
    args = parser.parse_args(argv)

    cfg = load_run_config(args)  # validate before touching anything
    layout = RunLayout(args.run_dir.resolve())
    progress_file = ProgressFile(layout.root, inspect_disk=lambda: rebuild_records(layout))
    progress = progress_file.read()
    for note in progress.notes:
        print(f"note: {note}")

    if args.retrain_from and args.mode not in (None, "resume"):
        raise UserError(f"--retrain-from goes with --mode resume (or no --mode), not --mode {args.mode}")
    mode = "resume" if args.retrain_from else (args.mode or _ask_mode(layout, progress))
    if mode is None:
        return 0
    if mode == "fresh":
        if not _confirm_fresh(layout, assume_yes=args.yes or args.dry_run):
            print("nothing deleted")
            return 1
        if not args.dry_run:
            cancelled = stop_in_flight(progress, progress_file, cfg.slurm.job_dir)
            if cancelled:
                print(f"cancelled in-flight jobs (and waited until they ended): {' '.join(cancelled)}")
            delete_for_fresh(layout, progress_file)
            progress = Progress()

    steps = make_plan(mode, layout, progress, data_ready=data_is_prepared(cfg, layout.root), cfg=cfg,
                      retrain_from=args.retrain_from, force=args.force)
    executor = resolve_executor(args.executor)
    _print_plan(mode, executor, steps)
    undecided = [s for s in steps if s.decide]
    if undecided and not args.dry_run:
        first = undecided[0]
        raise UserError(f"{first.stage} needs a decision ({first.reason}): pass --force to keep the trained "
                        f"model(s) as they are, or --retrain-from {first.stage} to retrain it and its dependants "
                        f"(old files kept aside)")
    if args.dry_run:
        return 0
    command = StageCommand(config=args.config.resolve() if args.config else None, overrides=tuple(args.overrides),
                           run_dir=layout.root, force=args.force)
    returncode = execute(steps, command, progress_file, cfg, executor)
    if returncode == 0 and executor == "local":
        print(f"pipeline finished: {progress_file.read().state}")
    return returncode


def menu_header(layout: RunLayout, progress: Progress) -> str:
    lines = ["=" * 40, "非侵入性心梗估计 - 完整训练流程 (MI estimation: full training pipeline)", "=" * 40, "",
             f"检测到上次训练进度: {progress.state}", "", "检查已训练的模型 (trained models):"]
    for stage in MODEL_STAGES:
        health = inspect_stage(layout, stage)
        mark = "✓" if health.best_ok else "✗"
        extra = "" if health.best_ok or health.best_problem == "missing" else "  (best_model.pth corrupted)"
        lines.append(f"  {mark} {MODEL_NAMES[stage]}{extra}")
    return "\n".join(lines) + "\n"


def _ask_mode(layout: RunLayout, progress: Progress) -> str | None:
    if not sys.stdin.isatty():
        raise UserError("--mode is required when not on a terminal (fresh | resume | skip)")
    print(menu_header(layout, progress))
    print(MENU)
    while True:
        try:
            answer = input("请输入选项 [1-4]: ").strip()
        except EOFError:
            return None
        if answer in ("1", "2", "3"):
            return MODES[int(answer) - 1]
        if answer == "4":
            print("退出 (quit)")
            return None
        print("please enter 1, 2, 3 or 4")


def _confirm_fresh(layout: RunLayout, assume_yes: bool) -> bool:
    targets = [p for p in layout.fresh_targets() if p.exists()]
    print("mode fresh will delete:" if targets else "mode fresh: nothing to delete")
    for path in targets:
        print(f"  {path}")
    if not targets or assume_yes:
        return True
    if not sys.stdin.isatty():
        raise UserError("mode fresh deletes the paths listed above: pass --yes to confirm when not on a terminal")
    try:
        return input("请确认 (confirm) [y/N]: ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _print_plan(mode: str, executor: str, steps: list[Step]) -> None:
    print(f"plan (mode {mode}, executor {executor}):")
    for step in steps:
        print(f"  {step.describe()}")


if __name__ == "__main__":
    exit_process(run_main(main))
