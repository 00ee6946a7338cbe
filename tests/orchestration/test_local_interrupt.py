"""Ctrl-C on a local ``submit``: the running stage saves its exact position, and the record says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, checkpoint_epoch, env, wait_for

TINY = REPO / "tests" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-to-the-submitter"])
def test_ctrl_c_or_sigterm_waits_for_the_stage_to_save_instead_of_leaving_it(tmp_path: Path, how: str) -> None:
    """Ctrl-C reaches the whole foreground group; a SIGTERM (``kill PID``, a batch system) reaches the
    submitter alone, which passes it on to the stage and waits, so nothing is left running unowned."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mi_pipeline.submit", "--mode", "fresh", "--yes", "--executor",
                             "local", "--config", str(TINY), "--run-dir", str(run), "--set", "motion.epochs=400"],
                            env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, like a terminal's foreground job
    last = run / "checkpoints" / "motion" / "last.pth"
    wait_for(lambda: checkpoint_epoch(last) >= 1, 300, "motion's first epoch", proc)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group gets SIGINT
    else:
        os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    log = (run / "logs" / "motion" / "train.log").read_text()
    assert "will save the exact position" in log and "resume continues from there" in log, log[-2000:]
    record = json.loads((run / ".training_progress").read_text().split("\n", 2)[2])["stages"]
    assert record["motion"]["status"] == "failed" and "interrupted by SIG" in record["motion"]["error"]
    assert record["segmentation"]["status"] == "not_started"
    stage_pid = record["motion"]["pid"]
    assert stage_pid is None or not Path(f"/proc/{stage_pid}").exists(), "the stage ended with its submitter"
    plan = subprocess.run([sys.executable, "-m", "mi_pipeline.submit", "--mode", "resume", "--dry-run", "--executor",
                           "local", "--config", str(TINY), "--run-dir", str(run), "--set", "motion.epochs=400"],
                          env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "continues from last.pth" in plan.stdout, plan.stdout + plan.stderr
