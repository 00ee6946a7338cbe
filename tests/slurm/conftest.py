"""Fixtures for tests that run against the real local SLURM cluster (tests/slurm/cluster.sh).

``slurm_cluster`` (session scope) checks ``tests/slurm/cluster.sh status``. When the cluster is
not up the test is skipped -- or FAILS when ``MI_PIPELINE_REQUIRE_SLURM=1`` (CI sets it, so a
broken cluster can never turn into a green run of skipped tests).

The fixture returns a :class:`SlurmCluster` with helpers to read a job's accounting record
(``sacct``), wait for a job to reach a state, and wait until a requeued job is pending again
(SLURM then holds it, reason ``BeginTime``, for cred_expire + 1 s before it may start).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

CLUSTER_SH = Path(__file__).resolve().parent / "cluster.sh"
REQUIRE_ENV = "MI_PIPELINE_REQUIRE_SLURM"
SKIP_REASON = "no SLURM cluster: run tests/slurm/cluster.sh start"

#: sacct states after which a job never runs again (the first word; "CANCELLED by 0" -> CANCELLED).
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
    }
)


def _run(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _parse_time(value: str) -> dt.datetime | None:
    value = value.strip()
    if not value or value in {"Unknown", "None", "N/A"}:
        return None
    return dt.datetime.fromisoformat(value)


@dataclasses.dataclass(frozen=True)
class SacctRecord:
    """One job's allocation row from ``sacct -X`` (its latest run when it was requeued)."""

    job_id: str
    state: str  # first word of sacct's State, e.g. "COMPLETED", "CANCELLED", "REQUEUED"
    raw_state: str  # as sacct printed it, e.g. "CANCELLED by 0"
    submit: dt.datetime | None
    start: dt.datetime | None
    end: dt.datetime | None
    exit_code: str  # "<exit>:<signal>"

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


_SACCT_FIELDS = "JobIDRaw,State,Submit,Start,End,ExitCode"


def sacct_job(job_id: str | int, *, all_runs: bool = False) -> list[SacctRecord]:
    """Return the ``sacct -X`` rows of ``job_id`` (empty list when sacct does not know it yet).

    With ``all_runs=True`` (``sacct -D``) a requeued job yields one row per run, the earlier ones
    in state REQUEUED; otherwise only its latest run.
    """
    args = ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", _SACCT_FIELDS]
    if all_runs:
        args.insert(1, "-D")
    proc = _run(args)
    if proc.returncode != 0:
        raise RuntimeError(f"sacct -j {job_id} failed: {proc.stderr.strip()}")
    records = []
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        jid, state, submit, start, end, exit_code = line.split("|")
        records.append(
            SacctRecord(
                job_id=jid,
                state=state.split()[0] if state.strip() else "",
                raw_state=state,
                submit=_parse_time(submit),
                start=_parse_time(start),
                end=_parse_time(end),
                exit_code=exit_code,
            )
        )
    return records


def sacct_state(job_id: str | int) -> SacctRecord | None:
    """The latest run of ``job_id`` as sacct sees it, or None when sacct has no row yet."""
    rows = [r for r in sacct_job(job_id) if r.job_id == str(job_id)]
    return rows[-1] if rows else None


def wait_for_sacct(
    job_id: str | int, states: Iterable[str] = TERMINAL_STATES, timeout: float = 60.0
) -> SacctRecord:
    """Poll sacct until ``job_id`` is in one of ``states``; raise TimeoutError with the last row."""
    wanted = frozenset(states)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = sacct_state(job_id)
        if last is not None and last.state in wanted:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not in {sorted(wanted)} after {timeout}s; last sacct row: {last}")
        time.sleep(0.5)


def squeue_state(job_id: str | int) -> tuple[str, str] | None:
    """(state, reason) from squeue, or None when the controller no longer lists the job."""
    proc = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T|%r"])
    line = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not line:
        return None
    state, _, reason = line[0].partition("|")
    return state, reason


def wait_until_requeued(job_id: str | int, timeout: float = 60.0) -> None:
    """Wait until a requeued job is PENDING again; SLURM's own hold then starts it.

    The hold (reason BeginTime, cred_expire + 1 s: 11 s on this cluster) is not to be skipped:
    releasing it with ``StartTime=now`` lets the controller launch the job while the killed
    run's credential is still revoked, and slurmd fails the launch ("Job credential revoked").
    """
    deadline = time.monotonic() + timeout
    while True:
        st = squeue_state(job_id)
        if st is not None and st[0] == "PENDING":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not PENDING (requeued) after {timeout}s; squeue: {st}")
        time.sleep(0.25)


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """Handle returned by the ``slurm_cluster`` fixture (helpers are also module functions)."""

    status_output: str

    sacct = staticmethod(sacct_state)
    sacct_all = staticmethod(sacct_job)
    wait_for = staticmethod(wait_for_sacct)
    wait_until_requeued = staticmethod(wait_until_requeued)
    squeue = staticmethod(squeue_state)


def cluster_status() -> tuple[bool, str]:
    if not CLUSTER_SH.exists():
        return False, f"{CLUSTER_SH} missing"
    try:
        proc = _run(["bash", str(CLUSTER_SH), "status"], timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cluster.sh status did not finish: {exc}"
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    ok, output = cluster_status()
    if not ok:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(
                f"{REQUIRE_ENV}=1 but the SLURM cluster is not accepting jobs "
                f"(run tests/slurm/cluster.sh start).\n{output}",
                pytrace=False,
            )
        pytest.skip(SKIP_REASON)
    return SlurmCluster(status_output=output)


def pytest_collection_modifyitems(config, items):
    """Tests under tests/slurm carry the ``slurm`` marker (``-m 'not slurm'`` deselects them)."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slurm)
