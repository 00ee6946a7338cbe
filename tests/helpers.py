"""Helpers shared by tests: run real processes, wait for files, compare weights bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    """Child-process environment that imports this checkout's package."""
    variables = dict(os.environ)
    variables["PYTHONPATH"] = str(REPO) + os.pathsep + variables.get("PYTHONPATH", "")
    return variables


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: float = 600,
               stdin: str | None = None, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env={**env(), **(extra_env or {})},
                          text=True, capture_output=True, timeout=timeout, input=stdin)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def checkpoint_epoch(path: Path) -> int:
    """Completed epochs recorded in a last.pth, or -1 when absent/unreadable (mid-write)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["state"]["epoch"])
    except Exception:
        return -1


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint, through the package's loader (the file packs its tensors)."""
    from mi_pipeline.engine import checkpoint as ckpt

    return ckpt.load_checkpoint(path)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"weights differ at {key}"


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (from /proc, no procps needed)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def run_status(run_dir: Path) -> dict:
    """``python -m mi_pipeline.status --json`` of a run, parsed."""
    result = run_module("mi_pipeline.status", "--run-dir", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_all_done(run_dir: Path, timeout: float = 400, explain: Callable[[], str] | None = None) -> dict:
    """Wait until the run is all_completed (a failed stage ends the wait with its report, and
    ``explain()``'s text, e.g. the jobs' output, when given)."""
    def finished() -> bool:
        report = run_status(run_dir)
        if any(i["status"] == "failed" for i in report["stages"].values()):
            more = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"a stage failed: {json.dumps(report, indent=1)}{more}")
        return report["state"] == "all_completed"

    wait_for(finished, timeout, "all stages done")
    return run_status(run_dir)


def wait_folds_done(run_dir: Path, timeout: float = 400, poll_s: float = 2.0) -> dict:
    """Wait until every fold of a k-fold run is all_completed (a failed stage ends the wait with its report).

    Polls every ``poll_s``: each poll is a ``status`` process importing the package, and on 2 cores a
    tight loop of them slows the very jobs it waits for.
    """
    def finished() -> bool:
        report = run_status(run_dir)
        folds = report.get("folds") or {}
        for fold in folds.values():
            if any(i["status"] == "failed" for i in fold["stages"].values()):
                raise AssertionError(f"a fold's stage failed: {json.dumps(report, indent=1)}")
        done = bool(folds) and all(f["state"] == "all_completed" for f in folds.values())
        if not done:
            time.sleep(poll_s)
        return done

    wait_for(finished, timeout, "all folds done")
    return run_status(run_dir)
