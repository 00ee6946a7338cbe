"""Turn a plan into processes: each stage is ``python -m mi_pipeline.train --stage S``.

The local executor runs the stages in dependency order, one process each, and stops the chain at
the first failure, naming the step. (The SLURM executor submits the same commands as jobs.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mi_pipeline.orchestration.plan import Step
from mi_pipeline.orchestration.progress import ProgressFile


@dataclass(frozen=True)
class StageCommand:
    """How to start one stage: the same argument list for a local process and a SLURM job."""

    config: Path | None
    overrides: tuple[str, ...]
    run_dir: Path
    force: bool = False

    def argv(self, step: Step) -> list[str]:
        argv = [sys.executable, "-m", "mi_pipeline.train", "--stage", step.stage, "--run-dir", str(self.run_dir),
                "--on-upstream-change", "restart"]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        for item in self.overrides:
            argv += ["--set", item]
        if step.restart:
            argv.append("--restart")
        if self.force:
            argv.append("--force")
        return argv


def resolve_executor(requested: str) -> str:
    """``auto`` means SLURM when ``sbatch`` is on PATH, else local."""
    if requested != "auto":
        return requested
    return "slurm" if shutil.which("sbatch") else "local"


def run_local(steps: list[Step], command: StageCommand, progress: ProgressFile) -> int:
    """Run the planned steps one after another; return the first non-zero exit status (or 0)."""
    for step in steps:
        if step.run:
            # pid/host of this submitter: status can tell a pending stage whose submitter died
            progress.update_stage(step.stage, status="pending", executor="local", job_id=None, error=None,
                                  pid=os.getpid(), host=socket.gethostname())
    for step in steps:
        if not step.run:
            continue
        print(f"==> {step.stage}: {step.reason}", flush=True)
        returncode = subprocess.call(command.argv(step))
        if returncode != 0:
            log = command.run_dir / "logs" / step.stage / "train.log"
            print(f"error: step {step.stage} failed (exit status {returncode}); see {log}. "
                  f"Later steps were not started; fix the cause and run: submit --mode resume", file=sys.stderr)
            for later in steps[steps.index(step) + 1:]:
                if later.run:
                    progress.update_stage(later.stage, status="not_started", note=f"not started: {step.stage} failed")
            return returncode
    return 0
