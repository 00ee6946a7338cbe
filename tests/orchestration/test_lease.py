"""The stage lease's refusal, as a user on a shared cluster reads it: a holder on another host (no SLURM to
ask) is judged by its heartbeat, and the refusal says when the lease lapses if that host is down."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mi_pipeline.errors import UserError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration import lease
from mi_pipeline.orchestration.progress import ProgressFile


def _held(tmp_path: Path, host: str, pid: int, heartbeat_age_s: float) -> ProgressFile:
    progress = ProgressFile.for_run(RunLayout(tmp_path))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - heartbeat_age_s))
    with progress.update() as record:
        entry = record.stages["motion"]
        entry.status, entry.host, entry.pid, entry.executor = "running", host, pid, "local"
        entry.started = entry.heartbeat = entry.updated = stamp
    return progress


def test_a_holder_on_another_host_is_refused_with_when_its_lease_lapses(tmp_path: Path) -> None:
    progress = _held(tmp_path, "node-that-crashed", 4242, heartbeat_age_s=100)
    with pytest.raises(UserError) as refused:
        lease.take(progress, "motion", lease.Holder.me(), "log")
    message = str(refused.value)
    assert "\n" not in message and "pid 4242 on node-that-crashed" in message
    found = re.search(r"last heartbeat was (\d+) s ago: if node-that-crashed is down, the lease lapses (\d+) s from now",
                      message)
    assert found, message
    ago, lapses = int(found.group(1)), int(found.group(2))
    assert 99 <= ago <= 110 and ago + lapses == pytest.approx(600, abs=1)


def test_after_ten_minutes_without_a_heartbeat_the_lease_is_taken_over(tmp_path: Path) -> None:
    progress = _held(tmp_path, "node-that-crashed", 4242, heartbeat_age_s=601)
    before = lease.take(progress, "motion", lease.Holder.me(), "log")
    assert before.host == "node-that-crashed"
    assert progress.read().stages["motion"].host == socket.gethostname()


def test_a_live_holder_on_this_host_is_refused_without_a_heartbeat_clock(tmp_path: Path) -> None:
    """On this host the process itself is asked: no lapse time to wait for, it lives or it does not."""
    holder = subprocess.Popen(["sleep", "60"])
    try:
        progress = _held(tmp_path, socket.gethostname(), holder.pid, heartbeat_age_s=100)
        with pytest.raises(UserError) as refused:
            lease.take(progress, "motion", lease.Holder.me(), "log")
        assert f"pid {holder.pid}" in str(refused.value) and "lapses" not in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    lease.take(progress, "motion", lease.Holder.me(), "log")  # its process gone: taken over at once
