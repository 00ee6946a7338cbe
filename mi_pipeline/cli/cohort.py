"""Cohort predict: every cine of a folder, resumable, as local processes or a SLURM job array.

``python -m mi_pipeline.predict --cohort --cine FOLDER --out DIR [--executor inline|local|slurm] [--jobs N]``
writes ``DIR/<subject>/`` as predict does, ``DIR/<subject>/done.json`` when a subject is finished,
and ``DIR/cohort.csv`` (subject, infarct %, myocardium ml, infarct ml, flags). Run the same command
again after an interruption: finished subjects are skipped (one cut off mid-way starts over), unless
the models or the subject's cine changed since; ``--retry-failed`` also retries the failed ones.

On SLURM the array's sbatch options, setup lines and container image come from ``--config`` or the
run's own ``config.yaml``, never from the config stored in a checkpoint (a checkpoint is data anyone
who can write the run may replace; its settings choose the models only).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mi_pipeline import cohort
from mi_pipeline.cli.common import add_config_options, add_run_dir_option, command_parser, model_source, parse_ed
from mi_pipeline.cli.helptext import full_help
from mi_pipeline.config import Config, ContainerConfig, SlurmConfig, load_config
from mi_pipeline.errors import CheckpointError, UserError
from mi_pipeline.layout import RunLayout


def _parser() -> argparse.ArgumentParser:
    p = full_help(command_parser("predict", __doc__), __doc__)
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
    p.add_argument("--retry-failed", action="store_true", help="compute the subjects that failed again too")
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
        cfg = _config(args)
        fingerprints = _fingerprints(args, cfg)
        counts = _run_worker(args, out, cohort.shard(subjects, index, count), cfg, fingerprints)
        print(f"cohort shard {index}/{count}: {counts['computed']} computed, {counts['skipped']} already done, "
              f"{counts['failed']} failed, {counts['busy']} being done by another worker; "
              + _table_line(out, subjects, fingerprints))
        return 0  # a subject busy elsewhere is finished by that worker, which rewrites the table when it ends
    from mi_pipeline.orchestration import cohort_jobs

    worker = _worker_argv(args, out)
    fingerprints = _fingerprints(args, _config(args))
    todo = cohort.pending(out, subjects, fingerprints, args.retry_failed)
    print(f"cohort: {len(subjects)} subject(s), {len(subjects) - len(todo)} already done, {len(todo)} to predict")
    if args.executor == "local":
        status = cohort_jobs.run_local(worker, args.jobs)
        print(_table_line(out, subjects, fingerprints))
        return status
    models_at = args.checkpoints if args.checkpoints is not None else args.run_dir or Path(".")  # a k-fold run: all folds
    binds = tuple(p.resolve() for p in (args.cine, models_at, *([args.config.parent] if args.config else [])))
    job = cohort_jobs.submit_array(worker, args.jobs, _job_config(args), cohort.state_dir(out), args.max_running, binds)
    print(f"submitted array job {job} ({args.jobs} task(s)); each task updates {out / cohort.TABLE} when it ends; "
          f"logs in {cohort.state_dir(out) / 'logs'}")
    return 0


def _table_line(out: Path, subjects: list[tuple[str, Path]], fingerprints: list[str]) -> str:
    """Rewrite the table and say what is in it, stale rows included (``cohort.write_table``)."""
    rows, stale = cohort.write_table(out, subjects, fingerprints)
    line = f"{out / cohort.TABLE}: {rows} of {len(subjects)} subjects"
    if stale:
        line += (f"; {stale} of them made by other models or from an older cine (flagged stale_model / "
                 f"stale_cine), not yet predicted again")
    return line


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


def _job_config(args: argparse.Namespace) -> Config:
    """The config the SLURM array runs with (its ``slurm`` and ``container`` sections): ``--config`` /
    ``--set``, else the run's own ``config.yaml``; a checkpoint's stored sections are never used,
    since running them would run whatever the last writer of ``best_model.pth`` put there."""
    if args.config is not None or args.overrides:
        return load_config(args.config, args.overrides)
    cfg = _config(args)
    own = RunLayout(args.run_dir).config_file if args.run_dir is not None else None
    if own is not None and own.is_file():
        run_cfg = load_config(own)
        return dataclasses.replace(cfg, slurm=run_cfg.slurm, container=run_cfg.container)
    print("note: the config stored in the checkpoint chooses the models only; the array's slurm and container "
          "settings are the defaults (pass --config for others)", file=sys.stderr)
    return dataclasses.replace(cfg, slurm=SlurmConfig(), container=ContainerConfig())


def _fingerprints(args: argparse.Namespace, cfg: Config) -> list[str]:
    """Content fingerprints of every model file the workers predict with (what a row is keyed by)."""
    from mi_pipeline.engine.checkpoint import file_fingerprint
    from mi_pipeline.stages.registry import best_path, inference_stages

    ckpt_root, folds = model_source(args.run_dir, args.checkpoints)
    paths = [best_path(root, stage) for root in (folds or [ckpt_root]) for stage in inference_stages(cfg)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CheckpointError(f"{missing[0]}: missing; train the model first (or pass --checkpoints)")
    return [file_fingerprint(p) for p in paths]


def _run_worker(args: argparse.Namespace, out: Path, mine: list[tuple[str, Path]], cfg: Config,
                fingerprints: list[str]) -> dict[str, int]:
    """Load the models once, then predict this worker's subjects whose rows do not stand."""
    if not cohort.pending(out, mine, fingerprints, args.retry_failed):
        return {"computed": 0, "skipped": len(mine), "failed": 0, "busy": 0}
    import torch

    from mi_pipeline.inference import inference_device, load_ensemble, load_models, predict_one
    from mi_pipeline.stages.registry import inference_stages

    torch.set_num_threads(cfg.threads)
    ed = parse_ed(args.ed)
    ckpt_root, folds = model_source(args.run_dir, args.checkpoints)
    stages, device = inference_stages(cfg), inference_device(cfg)
    models = load_ensemble(cfg, folds, stages, device) if folds else load_models(cfg, ckpt_root, stages, device)
    return cohort.run_shard(mine, out, lambda sid, path: predict_one(sid, path, out, models, cfg, ed=ed),
                            log=lambda line: print(line, file=sys.stderr), models=fingerprints,
                            retry_failed=args.retry_failed)


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
    if args.retry_failed:
        argv.append("--retry-failed")
    return argv
