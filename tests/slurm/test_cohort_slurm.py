"""Cohort predict as a SLURM job array on the live cluster: cancelled half-way, resubmitted, finished
with 50 rows and no subject computed twice (the computation log and the done records prove it)."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

from mi_pipeline import cohort
from mi_pipeline.config import PhantomConfig, load_config
from mi_pipeline.data.phantom import generate_subject, write_subject
from tests.helpers import run_module, wait_for
from tests.test_inference import TINY, save_untrained

SUBJECTS = 50
SMALL = ["data.crop=32", "data.frames=4"]  # the tiny model on tiny crops: a subject takes about a second
SLURM = ["slurm.cpus_per_task=1", "slurm.mem_gb=1", "slurm.time_min=10"]


def _array_tasks(job: str) -> list[str]:
    """The array's tasks still in the queue (one line each, pending ones included)."""
    done = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i"], capture_output=True, text=True)
    return done.stdout.split()


def _done(out: Path) -> dict[str, dict]:
    return {sid: r for sid in (f"p{i:02d}" for i in range(SUBJECTS)) if (r := cohort.read_done(out, sid))}


def test_cohort_array_cancelled_and_resumed(slurm_cluster, tmp_path: Path) -> None:
    overrides = [arg for item in SMALL + SLURM for arg in ("--set", item)]
    save_untrained(load_config(TINY, SMALL), tmp_path / "ckpt")
    params = PhantomConfig(subjects=SUBJECTS, seed=11, size=64, slices=2, frames=8)
    for i in range(SUBJECTS):
        write_subject(generate_subject(params, i), tmp_path / "cines" / f"p{i:02d}")
    out = tmp_path / "out"
    argv = ["--cohort", "--cine", str(tmp_path / "cines"), "--out", str(out), "--checkpoints", str(tmp_path / "ckpt"),
            "--config", str(TINY), *overrides, "--executor", "slurm", "--jobs", "5"]

    first = run_module("mi_pipeline.predict", *argv, timeout=60)
    assert first.returncode == 0, first.stderr
    job = first.stdout.split("submitted array job ")[1].split()[0]
    wait_for(lambda: len(_done(out)) >= SUBJECTS // 3, 300, "a third of the subjects")
    subprocess.run(["scancel", job], check=True)
    wait_for(lambda: not _array_tasks(job), 120, "the cancelled array to leave the queue")
    before = _done(out)
    assert 0 < len(before) < SUBJECTS, "cancelled too late to prove a resume"

    second = run_module("mi_pipeline.predict", *argv, timeout=60)
    assert second.returncode == 0, second.stderr
    assert f"{len(before)} already done" in second.stdout
    job2 = second.stdout.split("submitted array job ")[1].split()[0]
    wait_for(lambda: not _array_tasks(job2), 400, "the resubmitted array to finish")

    with open(out / cohort.TABLE) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["subject"] for r in rows] == [f"p{i:02d}" for i in range(SUBJECTS)]
    assert all(r["flags"] == "" or not r["flags"].startswith("failed") for r in rows)
    after = _done(out)
    assert {sid: after[sid] for sid in before} == before  # finished before the cancel: untouched
    assert {r["job"] for r in before.values()} == {job}
    assert {r["job"] for sid, r in after.items() if sid not in before} == {job2}  # the rest: the second array
    log = [line.split() for line in (out / cohort.STATE_DIR / "computed.log").read_text().splitlines()]
    finished = [fields[2] for fields in log if fields[1] == "done"]
    assert sorted(finished) == sorted(after) and len(finished) == SUBJECTS  # each computed to the end once
    started = [fields[2] for fields in log if fields[1] == "start"]
    again = {sid for sid in started if started.count(sid) > 1}
    assert len(again) <= 5  # only subjects the cancel cut off mid-way (one per running task) started twice
    assert all(sid not in before for sid in again)
