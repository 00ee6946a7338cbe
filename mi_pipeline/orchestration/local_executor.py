"""Turn a plan into processes: each stage is ``python -m mi_pipeline.train --stage S``.

The local executor runs the stages in dependency order, one process each, and stops the chain at
the first failure, naming the step. (The SLURM executor submits the same commands as jobs.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.plan import Step
from mi_pipeline.orchestration.progress import ProgressFile

ExecutorName = Literal["local", "slurm"]


@dataclass(frozen=True)
class StageCommand:
    """How to start one stage: the same argument list for a local process and a SLURM job."""

    config: Path | None
    overrides: tuple[str, ...]
    run_dir: Path
    force: bool = False

    def argv(self, step: Step, restart_token: str | None = None) -> list[str]:
        argv = [sys.executable, "-m", "mi_pipeline.train", "--stage", step.stage, "--run-dir", str(self.run_dir),
                "--on-upstream-change", "restart"]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        for item in self.overrides:
            argv += ["--set", item]
        if restart_token is not None:
            argv += ["--restart-token", restart_token]
        if self.force:
            argv.append("--force")
        return argv


def plan_restart(step: Step, progress: ProgressFile) -> str | None:
    """Record a planned restart of ``step`` and return its token (None when the step continues).

    The job carries the token; the first attempt that finds it in the record restarts and clears it,
    so a job that is requeued or rerun with the same arguments continues instead (stage_runner).
    """
    if not step.restart:
        return None
    token = uuid.uuid4().hex[:12]
    progress.update_stage(step.stage, restart_token=token)
    return token


def resolve_executor(requested: str, remembered: str | None = None) -> tuple[ExecutorName, str]:
    """The executor to use and why: as asked; for ``auto`` what the run was last submitted with, else
    SLURM when ``sbatch`` is on PATH, else local processes."""
    if requested in ("local", "slurm"):
        return requested, "as asked"  # type: ignore[return-value]
    if remembered in ("local", "slurm"):
        return remembered, "this run was last submitted with it; --executor changes it"  # type: ignore[return-value]
    if shutil.which("sbatch"):
        return "slurm", f"sbatch is on PATH ({shutil.which('sbatch')}); --executor local runs here instead"
    return "local", "no sbatch on PATH"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM to the submitter (``kill``, a batch system ending it) is handled like Ctrl-C: the running
    stage is told to save its position, the later steps are recorded as not started, and the
    submitter exits -- instead of dying alone and leaving its stage running with no one to start the
    rest."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a test driving the executor): nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_local(steps: list[Step], command: StageCommand, progress: ProgressFile) -> int:
    """Run the planned steps one after another; return the first non-zero exit status (or 0)."""
    with _sigterm_as_interrupt():
        return _run_steps(steps, command, progress)


def _run_steps(steps: list[Step], command: StageCommand, progress: ProgressFile) -> int:
    for step in steps:
        if step.run:
            # pid/host of this submitter: status can tell a pending stage whose submitter died
            progress.update_stage(step.stage, status="pending", executor="local", job_id=None, error=None,
                                  pid=os.getpid(), host=socket.gethostname())
    for step in steps:
        if not step.run:
            continue
        print(f"==> {step.stage}: {step.reason}", flush=True)
        try:
            returncode = run_child(command.argv(step, plan_restart(step, progress)))
        except KeyboardInterrupt:
            _not_started_after(steps, step, progress, "interrupted (Ctrl-C)")
            raise
        if returncode != 0:
            log = RunLayout(command.run_dir).train_log(step.stage)
            print(f"error: step {step.stage} failed (exit status {returncode}); see {log}. "
                  f"Later steps were not started; fix the cause and run: submit --mode resume", file=sys.stderr)
            _not_started_after(steps, step, progress, f"{step.stage} failed")
            return returncode
    return 0


def run_child(argv: list[str], grace_s: float = 600.0) -> int:
    """Run one stage process to its end, also when this submitter is interrupted.

    Ctrl-C reaches the stage too (same process group) and it saves its exact position; this waits
    for that save instead of killing the child at once (``subprocess.call`` gives it a fraction of
    a second), then re-raises KeyboardInterrupt. A SIGINT sent to the submitter alone is passed on
    as SIGTERM, which the stage handles the same way (a second SIGINT would abort its save).
    """
    child = subprocess.Popen(argv)
    try:
        return child.wait()
    except KeyboardInterrupt:
        print("interrupted: waiting for the running stage to save its position ...", file=sys.stderr, flush=True)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        _wait_ignoring_interrupts(child, grace_s)
        raise


def _wait_ignoring_interrupts(child: subprocess.Popen[bytes], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    while child.poll() is None and time.monotonic() < deadline:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            break
        except KeyboardInterrupt:
            continue  # a second Ctrl-C while it saves: keep waiting (the stage is nearly done)
    if child.poll() is None:
        child.kill()
        child.wait()


def _not_started_after(steps: list[Step], step: Step, progress: ProgressFile, why: str) -> None:
    for later in steps[steps.index(step) + 1:]:
        if later.run:
            progress.update_stage(later.stage, status="not_started", note=f"not started: {why}")
