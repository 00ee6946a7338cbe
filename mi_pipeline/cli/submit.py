"""Run the pipeline: choose a mode (fresh / resume / skip), plan, then run locally or submit to SLURM.

Without ``--mode`` on a terminal it shows the seed guide's menu; without a terminal it refuses,
so a batch job never blocks on input.
"""

from __future__ import annotations

import argparse
import sys

from mi_pipeline.cli.common import (
    add_run_options,
    command_parser,
    confirm_delete,
    exit_process,
    load_run_config,
    run_main,
)
from mi_pipeline.config import Config
from mi_pipeline.data.folds import check_settings, folds_path, read_folds
from mi_pipeline.data.prepare import data_is_prepared
from mi_pipeline.errors import UserError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.fold_setup import (
    check_fold,
    existing_folds,
    fold_layouts,
    prepare_folds,
)
from mi_pipeline.orchestration.folds import execute_folds, plan_folds
from mi_pipeline.orchestration.health import inspect_stage
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
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="k-fold cross-validation with K >= 2 folds (same as --set cv.folds=K)")
    parser.add_argument("--fold", type=int, default=None, metavar="k",
                        help="with folds: plan and submit fold k only (0-based)")
    args = parser.parse_args(argv)

    layout = RunLayout(args.run_dir.resolve())
    cfg = load_fold_config(args, layout)  # validate before touching anything
    progress_file = ProgressFile.for_run(layout)
    progress = progress_file.read()
    for note in progress.notes:
        print(f"note: {note}")

    if args.retrain_from and args.mode not in (None, "resume"):
        raise UserError(f"--retrain-from goes with --mode resume (or no --mode), not --mode {args.mode}")
    mode = "resume" if args.retrain_from else (args.mode or _ask_mode(layout, progress))
    if mode is None:
        return 0
    if cfg.cv.folds:
        return submit_folds(args, cfg, layout, progress, mode)
    if args.fold is not None:
        raise UserError(f"--fold {args.fold}: this run has no folds (cv.folds is 0; pass --folds K)")
    if mode == "fresh":
        if not confirm_delete(layout.fresh_targets(), assume_yes=args.yes or args.dry_run):
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
    lines = ["=" * 40, "非侵入性心梗估计 - 完整训练流程 (MI estimation: full training pipeline)", "=" * 40, ""]
    folds = existing_folds(layout)
    for fold in folds or [layout]:  # a k-fold run: the seed's lines once per fold
        record = progress if fold is layout else ProgressFile.for_run(fold).read()
        label = "" if fold is layout else f"[fold {fold.fold_index}] "
        lines += [f"{label}检测到上次训练进度: {record.state}", "", f"{label}检查已训练的模型 (trained models):"]
        for stage in MODEL_STAGES:
            health = inspect_stage(fold, stage)
            mark = "✓" if health.best_ok else "✗"
            extra = "" if health.best_ok or health.best_problem == "missing" else "  (best_model.pth corrupted)"
            lines.append(f"  {mark} {MODEL_NAMES[stage]}{extra}")
        lines.append("")
    return "\n".join(lines)


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


def load_fold_config(args: argparse.Namespace, layout: RunLayout) -> Config:
    """The config, with ``--folds`` applied; a run that has a split file stays a k-fold run.

    ``submit --mode resume`` after a bad night must not quietly train a single split at the top
    because ``--folds`` was left off: K then comes from ``data/splits/folds.json``.
    """
    if args.folds is not None:
        args.overrides.append(f"cv.folds={args.folds}")
    cfg = load_run_config(args)
    recorded = read_folds(layout.root)
    if recorded is not None and not cfg.cv.folds:
        print(f"note: {folds_path(layout.root)} says this is a {recorded['k']}-fold run: training its folds")
        args.overrides.append(f"cv.folds={recorded['k']}")
        cfg = load_run_config(args)
    return cfg


def submit_folds(args: argparse.Namespace, cfg: Config, layout: RunLayout, progress: Progress, mode: str) -> int:
    """``submit`` on a k-fold run: fresh clears the top and every fold, then the folds are planned together."""
    check_fold(args.fold, cfg.cv.folds, f"cv.folds={cfg.cv.folds}")
    check_settings(layout.root, cfg.cv.folds, cfg.data.split_seed)  # before anything is deleted or planned
    chosen = [layout.fold(args.fold)] if args.fold is not None else fold_layouts(cfg, layout)
    if mode == "fresh":
        tops = [] if args.fold is not None else [layout]
        targets = [p for lay in (*tops, *chosen) for p in lay.fresh_targets()]
        if not confirm_delete(targets, assume_yes=args.yes or args.dry_run):
            print("nothing deleted")
            return 1
        if not args.dry_run:
            for lay in (*tops, *chosen):
                records = ProgressFile.for_run(lay)
                cancelled = stop_in_flight(records.read(), records, cfg.slurm.job_dir)
                if cancelled:
                    print(f"cancelled in-flight jobs (and waited until they ended): {' '.join(cancelled)}")
                delete_for_fresh(lay, records)
            progress = Progress() if args.fold is None else progress
    data_ready = data_is_prepared(cfg, layout.root)
    if data_ready and not args.dry_run:
        prepare_folds(cfg, layout)  # checks the split file first: a changed split seed stops here
    plan = plan_folds(mode, cfg, layout, progress, data_ready, retrain_from=args.retrain_from, force=args.force,
                      only=args.fold)
    executor = resolve_executor(args.executor)
    print(f"plan (mode {mode}, executor {executor}, {cfg.cv.folds} folds):")
    for line in plan.describe():
        print(f"  {line}")
    if plan.undecided and not args.dry_run:
        k, first = plan.undecided[0]
        raise UserError(f"fold {k}: {first.stage} needs a decision ({first.reason}): pass --force to keep the "
                        f"trained model(s), or --retrain-from {first.stage} to retrain it and its dependants")
    if args.dry_run:
        return 0
    command = StageCommand(config=args.config.resolve() if args.config else None, overrides=tuple(args.overrides),
                           run_dir=layout.root, force=args.force)
    returncode = execute_folds(plan, command, cfg, executor)
    if returncode == 0 and executor == "local":
        print("folds finished: " + ", ".join(f"{k} {ProgressFile.for_run(layout.fold(k)).read().state}" for k in plan.folds))
    return returncode


def _print_plan(mode: str, executor: str, steps: list[Step]) -> None:
    print(f"plan (mode {mode}, executor {executor}):")
    for step in steps:
        print(f"  {step.describe()}")


if __name__ == "__main__":
    exit_process(run_main(main))
