"""Run the pipeline: choose a mode (fresh / resume / skip), plan, then run locally or submit to SLURM.

Without ``--mode`` on a terminal it shows the seed guide's menu; without a terminal it refuses,
so a batch job never blocks on input.
"""

from __future__ import annotations

import argparse
import os
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
from mi_pipeline.data.folds import folds_path, read_folds
from mi_pipeline.errors import UserError
from mi_pipeline.graph import MODEL_STAGES
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.fold_setup import existing_folds
from mi_pipeline.orchestration.health import inspect_stage
from mi_pipeline.orchestration.local_executor import StageCommand, resolve_executor
from mi_pipeline.orchestration.progress import Progress, ProgressFile
from mi_pipeline.orchestration.submission import SubmitRequest, submit

MODES = ("fresh", "resume", "skip")
LANGUAGES = ("en", "zh")
LANG_ENV = "MI_PIPELINE_LANG"
TEXT = {
    "en": {
        "title": "MI estimation: full training pipeline",
        "detected": "progress found: {state}",
        "models": "trained models:",
        "names": {"motion": "motion model", "registration": "registration model",
                  "segmentation": "segmentation model"},
        "corrupted": "  (best_model.pth corrupted)",
        "menu": "choose a mode:\n"
                "  1) fresh  - clear all progress and models, start at step 1\n"
                "  2) resume - continue where the last run stopped (mid-stage too)\n"
                "  3) skip   - skip models whose best_model.pth exists, train the rest\n"
                "  4) quit\n",
        "prompt": "enter 1-4: ",
        "quit": "quit",
    },
    # The original run_all.sh guide's prompts, with the English beside them (--lang zh).
    "zh": {
        "title": "非侵入性心梗估计 - 完整训练流程 (MI estimation: full training pipeline)",
        "detected": "检测到上次训练进度: {state}",
        "models": "检查已训练的模型 (trained models):",
        "names": {"motion": "运动估计模型 (motion)", "registration": "配准模型 (registration)",
                  "segmentation": "分割模型 (segmentation)"},
        "corrupted": "  (best_model.pth corrupted)",
        "menu": "请选择训练模式 (choose a mode):\n"
                "  1) 从头开始训练 fresh  - clear all progress and models, start at step 1\n"
                "  2) 断点续训     resume - continue where the last run stopped (mid-stage too)\n"
                "  3) 智能跳过     skip   - skip models whose best_model.pth exists, train the rest\n"
                "  4) 退出         quit\n",
        "prompt": "请输入选项 [1-4]: ",
        "quit": "退出 (quit)",
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("submit", __doc__)
    parser.add_argument("--mode", choices=MODES,
                        help="fresh | resume | skip (default: ask on a terminal; resume with --dry-run)")
    add_run_options(parser, config_help="YAML config (default: the run's own config.yaml when the run has one, "
                                        "else the built-in defaults); a different file is a config change")
    parser.add_argument("--executor", choices=("auto", "local", "slurm"), default="auto",
                        help="auto = what this run was last submitted with; for a new run SLURM when sbatch is "
                             "on PATH, else local processes (the choice and its reason are printed)")
    parser.add_argument("--yes", action="store_true", help="do not ask before deleting (mode fresh)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and change nothing (without --mode: the plan of mode resume)")
    parser.add_argument("--force", action="store_true",
                        help="resume even where the config changed (finished stages are kept as trained)")
    parser.add_argument("--retrain-from", choices=MODEL_STAGES, default=None, metavar="STAGE",
                        help="retrain STAGE and every stage after it (the seed's 'restart from a step'; mode resume)")
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="k-fold cross-validation with K >= 2 folds (same as --set cv.folds=K)")
    parser.add_argument("--fold", type=int, default=None, metavar="k",
                        help="with folds: plan and submit fold k only (0-based)")
    parser.add_argument("--lang", choices=LANGUAGES, default=None,
                        help=f"language of the interactive menu: en (default) or zh, the original guide's "
                             f"Chinese prompts beside the English (also via {LANG_ENV}=zh)")
    args = parser.parse_args(argv)

    layout = RunLayout(args.run_dir.resolve())
    cfg = load_fold_config(args, layout)  # validate before touching anything
    progress = ProgressFile.for_run(layout).read()
    for note in progress.notes:
        print(f"note: {note}")
    if args.retrain_from and args.mode not in (None, "resume"):
        raise UserError(f"--retrain-from goes with --mode resume (or no --mode), not --mode {args.mode}")
    mode = "resume" if args.retrain_from or (args.dry_run and not args.mode) else args.mode
    mode = mode or _ask_mode(layout, progress, _language(args.lang))
    if mode is None:
        return 0
    executor, why = resolve_executor(args.executor, progress.executor)
    if args.executor == "auto":
        print(f"executor: {executor} ({why})")
    command = StageCommand(config=args.config.resolve() if args.config else None, overrides=tuple(args.overrides),
                           run_dir=layout.root, force=args.force)
    request = SubmitRequest(mode=mode, top=layout, cfg=cfg, command=command, executor=executor, force=args.force,
                            retrain_from=args.retrain_from, fold=args.fold, dry_run=args.dry_run)
    return submit(request, confirm=lambda paths: confirm_delete(paths, assume_yes=args.yes or args.dry_run))


def _language(flag: str | None) -> str:
    chosen = flag or os.environ.get(LANG_ENV, "en")
    if chosen not in LANGUAGES:
        raise UserError(f"{LANG_ENV}={chosen!r}: expected one of {', '.join(LANGUAGES)}")
    return chosen


def menu_header(layout: RunLayout, progress: Progress, lang: str = "en") -> str:
    text = TEXT[lang]
    lines = ["=" * 40, text["title"], "=" * 40, ""]
    folds = existing_folds(layout)
    for fold in folds or [layout]:  # a k-fold run: the seed's lines once per fold
        record = progress if fold is layout else ProgressFile.for_run(fold).read()
        label = "" if fold is layout else f"[fold {fold.fold_index}] "
        lines += [f"{label}{text['detected'].format(state=record.state)}", "", f"{label}{text['models']}"]
        for stage in MODEL_STAGES:
            health = inspect_stage(fold, stage)
            mark = "✓" if health.best_ok else "✗"
            extra = "" if health.best_ok or health.best_problem == "missing" else text["corrupted"]
            lines.append(f"  {mark} {text['names'][stage]}{extra}")
        lines.append("")
    return "\n".join(lines)


def _ask_mode(layout: RunLayout, progress: Progress, lang: str) -> str | None:
    if not sys.stdin.isatty():
        raise UserError("--mode is required when not on a terminal (fresh | resume | skip)")
    text = TEXT[lang]
    print(menu_header(layout, progress, lang))
    print(text["menu"])
    while True:
        try:
            answer = input(text["prompt"]).strip()
        except EOFError:
            return None
        if answer in ("1", "2", "3"):
            return MODES[int(answer) - 1]
        if answer == "4":
            print(text["quit"])
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


if __name__ == "__main__":
    exit_process(run_main(main))
