"""Cohort predict: every cine of a folder, resumable, as local processes or a SLURM job array.

``python -m mi_pipeline.predict --cohort --cine FOLDER --out DIR [--executor inline|local|slurm] [--jobs N]``
writes ``DIR/<subject>/`` as predict does, ``DIR/<subject>/done.json`` when a subject is finished,
and ``DIR/cohort.csv`` (subject, infarct %, myocardium ml, infarct ml, flags). Run the same command
again after an interruption: finished subjects are skipped (one cut off mid-way starts over).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mi_pipeline import cohort
from mi_pipeline.cli.common import add_config_options, add_run_dir_option, command_parser, model_source, parse_ed
from mi_pipeline.config import Config, load_config
from mi_pipeline.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = command_parser("predict", __doc__)
    p.add_argument("--cohort", action="store_true", required=True, help="cohort mode (this help)")
    p.add_argument("--cine", required=True, type=Path, help="folder of cines (*.nii.gz or <subject>/cine.nii.gz)")
    p.add_argument("--out", required=True, type=Path, help="output folder (DIR/<subject>/..., DIR/cohort.csv)")
    src = p.add_mutually_exclusive_group()
    add_run_dir_option(src, default=None)
    src.add_argument("--checkpoints", type=Path, default=None, help="folder with <stage>/best_model.pth")
    add_config_options(p, config_help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--ed", default="auto", help="0-based ED frame of the cines, or 'auto' (default)")
    p.add_argument("--executor", choices=("inline", "local", "slurm"), default="inline",
                   help="inline: this process; local: --jobs processes; slurm: an array of --jobs tasks")
    p.add_argument("--jobs", type=int, default=1, help="workers (processes or array tasks), default 1")
    p.add_argument("--max-running", type=int, default=0, help="slurm: at most this many tasks at once (0: no cap)")
    p.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # I/N: set for each worker
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs: must be >= 1, got {args.jobs}")
    out = args.out.resolve()
    subjects = _find(args.cine)
    if args.executor == "inline":
        index, count = _parse_shard(args.shard)
        counts = _run_worker(args, out, cohort.shard(subjects, index, count))
        rows = cohort.write_table(out, subjects)
        print(f"cohort shard {index}/{count}: {counts['computed']} computed, {counts['skipped']} already done, "
              f"{counts['failed']} failed, {counts['busy']} being done by another worker; "
              f"{out / cohort.TABLE}: {rows} of {len(subjects)} subjects")
        return 0  # a subject busy elsewhere is finished by that worker, which rewrites the table when it ends
    from mi_pipeline.orchestration import cohort_jobs

    worker = _worker_argv(args, out)
    todo = cohort.pending(out, subjects)
    print(f"cohort: {len(subjects)} subject(s), {len(subjects) - len(todo)} already done, {len(todo)} to predict")
    if args.executor == "local":
        status = cohort_jobs.run_local(worker, args.jobs)
        rows = cohort.write_table(out, subjects)
        print(f"{out / cohort.TABLE}: {rows} of {len(subjects)} subjects")
        return status
    models_at = args.checkpoints if args.checkpoints is not None else args.run_dir or Path(".")  # a k-fold run: all folds
    binds = tuple(p.resolve() for p in (args.cine, models_at, *([args.config.parent] if args.config else [])))
    job = cohort_jobs.submit_array(worker, args.jobs, _config(args), cohort.state_dir(out), args.max_running, binds)
    print(f"submitted array job {job} ({args.jobs} task(s)); each task updates {out / cohort.TABLE} when it ends; "
          f"logs in {cohort.state_dir(out) / 'logs'}")
    return 0


def _find(cine: Path) -> list[tuple[str, Path]]:
    from mi_pipeline.inference import find_cines

    return [(sid, path.resolve()) for sid, path in find_cines(cine)]


def _parse_shard(value: str | None) -> tuple[int, int]:
    if value is None:
        return 0, 1
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise UserError(f"--shard: expected I/N, got {value!r}") from None
    return index, count


def _ckpt_root(args: argparse.Namespace) -> Path:
    return model_source(args.run_dir, args.checkpoints)[0]


def _config(args: argparse.Namespace) -> Config:
    from mi_pipeline.inference import stored_config

    if args.config is not None or args.overrides:
        return load_config(args.config, args.overrides)
    return stored_config(_ckpt_root(args))


def _run_worker(args: argparse.Namespace, out: Path, mine: list[tuple[str, Path]]) -> dict[str, int]:
    """Load the models once, then predict this worker's unfinished subjects."""
    if not cohort.pending(out, mine):
        return {"computed": 0, "skipped": len(mine), "failed": 0, "busy": 0}
    import torch

    from mi_pipeline.inference import inference_device, load_ensemble, load_models, predict_one
    from mi_pipeline.stages.registry import inference_stages

    cfg = _config(args)
    torch.set_num_threads(cfg.threads)
    ed = parse_ed(args.ed)
    ckpt_root, folds = model_source(args.run_dir, args.checkpoints)
    stages, device = inference_stages(cfg), inference_device(cfg)
    models = load_ensemble(cfg, folds, stages, device) if folds else load_models(cfg, ckpt_root, stages, device)
    return cohort.run_shard(mine, out, lambda sid, path: predict_one(sid, path, out, models, cfg, ed=ed),
                            log=lambda line: print(line, file=sys.stderr))


def _worker_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """The command line of one worker: this one's, with absolute paths, run inline."""
    argv = [sys.executable, "-m", "mi_pipeline.predict", "--cohort", "--cine", str(args.cine.resolve()),
            "--out", str(out), "--ed", args.ed, "--executor", "inline"]
    if args.checkpoints is not None:
        argv += ["--checkpoints", str(args.checkpoints.resolve())]
    elif args.run_dir is not None:
        argv += ["--run-dir", str(args.run_dir.resolve())]
    if args.config is not None:
        argv += ["--config", str(args.config.resolve())]
    for item in args.overrides:
        argv += ["--set", item]
    return argv
