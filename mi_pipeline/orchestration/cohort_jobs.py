"""Cohort predict's workers as local processes or as one SLURM job array.

Each worker is ``python -m mi_pipeline.predict --cohort ... --executor inline --shard I/N``; what a
worker does (and why a resubmission is safe) is in ``mi_pipeline/cohort.py``. Plain ``sbatch
--array`` rather than submitit: an array task needs no pickled state, only its index, and the
script written beside the outputs shows exactly what ran.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from mi_pipeline.config import Config
from mi_pipeline.errors import UserError
from mi_pipeline.fsio import atomic_write_text
from mi_pipeline.orchestration.container import python_command
from mi_pipeline.orchestration.private import owner_only, sbatch_path


def run_local(worker_argv: list[str], jobs: int) -> int:
    """Start ``jobs`` worker processes side by side; the worst exit status."""
    children = [subprocess.Popen([*worker_argv, "--shard", f"{i}/{jobs}"]) for i in range(jobs)]
    return max(child.wait() for child in children)


def array_script(worker_argv: list[str], jobs: int, cfg: Config, log_dir: Path, max_running: int,
                 binds: tuple[Path, ...] = ()) -> str:
    """The sbatch script of a ``jobs``-task array; task i runs shard i of ``jobs``.

    With ``container.image`` set, the worker's Python is the image's (``container.python_command``),
    with the output folder and ``binds`` (cines, checkpoints, config folder) bound at their own paths.
    """
    s = cfg.slurm
    python = python_command(cfg, log_dir.parents[1], binds)
    command = f"{python} {shlex.join(worker_argv[1:])}" if python else shlex.join(worker_argv)
    limit = f"%{max_running}" if max_running else ""
    lines = ["#!/bin/bash", "#SBATCH --job-name=mi-cohort", f"#SBATCH --array=0-{jobs - 1}{limit}",
             f"#SBATCH --output={sbatch_path(log_dir, '/%A_%a.out')}", f"#SBATCH --cpus-per-task={s.cpus_per_task}",
             f"#SBATCH --mem={s.mem_gb}G", f"#SBATCH --time={s.time_min}"]
    lines += [f"#SBATCH --{key}={value}" for key, value in (("partition", s.partition), ("account", s.account),
                                                             ("qos", s.qos), ("constraint", s.constraint)) if value]
    lines += [f"#SBATCH --{item}" for item in s.extra]
    lines += list(s.setup)
    lines.append(f"exec {command} --shard \"$SLURM_ARRAY_TASK_ID/{jobs}\"")
    return "\n".join(lines) + "\n"


def submit_array(worker_argv: list[str], jobs: int, cfg: Config, state_dir: Path, max_running: int = 0,
                 binds: tuple[Path, ...] = ()) -> str:
    """Write the array's script into ``state_dir`` (``OUT/.cohort``) and submit it; the array's job id.

    The script is the owner's alone (0600) and the tasks' logs folder 0700 (``private.owner_only``).
    """
    log_dir = state_dir / "logs"
    script = state_dir / "predict_array.sbatch"
    with owner_only(log_dir):
        atomic_write_text(script, array_script(worker_argv, jobs, cfg, log_dir, max_running, binds))
    try:
        done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError("--executor slurm: sbatch not found on PATH (use --executor local)") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise UserError(f"sbatch refused the cohort array ({script}): {reason}")
    return done.stdout.strip().split(";")[0]
