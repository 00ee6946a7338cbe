"""Item 5b: per-job scheduling overhead on a SLURM cluster, when one answers.

A small pipeline (one epoch per stage; what is measured is the scheduler, not training) is submitted
with ``submit --executor slurm``; sacct then says when each job was submitted, started and ended.
Figures: submit -> start of the first job, upstream end -> dependant start for the others (how fast
``afterok`` releases a job), and the pipeline's wall time vs its critical path of job run times
(data + max(motion, registration) + segmentation). sacct has one-second resolution. Jobs of other
users queued on the same nodes add to these numbers; ``queue_at_submit`` says how many there were.
Skipped, with the reason, when ``sbatch`` is missing or the cluster does not answer.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import time
from typing import Any

from benchmarks.perf.timing import median
from benchmarks.perf.workspace import Bench, python_module, run_child
from mi_pipeline.graph import UPSTREAM
from mi_pipeline.orchestration.progress import ProgressFile

SETTINGS = ("slurm.gpus_per_node=0", "slurm.cpus_per_task=1", "slurm.mem_gb=1", "slurm.time_min=20", "device=cpu")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}


def unavailable() -> str | None:
    """Why SLURM cannot be measured here, or None when the cluster answers."""
    if not shutil.which("sbatch"):
        return "sbatch not on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo did not answer ({exc})"
    if proc.returncode != 0 or "up" not in proc.stdout.split():
        return f"no partition up (sinfo: {(proc.stdout + proc.stderr).strip()[:120] or 'no output'})"
    return None


def _queue_length() -> int:
    proc = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=15, check=False)
    return len(proc.stdout.split())


def sacct_rows(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    proc = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobIDRaw,State,Submit,Start,End"],
                          capture_output=True, text=True, timeout=30, check=False)
    rows = {}
    for line in proc.stdout.splitlines():
        job_id, state, *times = line.split("|")
        parsed = [dt.datetime.fromisoformat(t) if t and t not in ("Unknown", "None") else None for t in times]
        rows[job_id] = {"state": state.split()[0] if state else "", "submit": parsed[0], "start": parsed[1],
                        "end": parsed[2]}
    return rows


def wait_finished(job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = sacct_rows(job_ids)
        if all(rows.get(j, {}).get("state") in TERMINAL and rows[j]["end"] for j in job_ids):
            return rows
        time.sleep(1.0)
    return None


def summarise(jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Scheduling figures from the (stage -> sacct row) of one pipeline."""
    def seconds(a: dt.datetime, b: dt.datetime) -> float:
        return (b - a).total_seconds()

    run = {s: seconds(j["start"], j["end"]) for s, j in jobs.items()}
    gaps = {s: seconds(max(jobs[u]["end"] for u in UPSTREAM[s]), j["start"])
            for s, j in jobs.items() if UPSTREAM[s]}
    critical = run["data"] + max(run["motion"], run["registration"]) + run["segmentation"]
    wall = seconds(min(j["submit"] for j in jobs.values()), max(j["end"] for j in jobs.values()))
    return {
        "submit_to_start_s": seconds(jobs["data"]["submit"], jobs["data"]["start"]),
        "dependency_release_s": gaps, "dependency_release_median_s": median(list(gaps.values())),
        "job_run_s": run, "wall_s": wall, "critical_path_s": critical,
        "wall_vs_critical_path": round(wall / critical, 4) if critical > 0 else None,
        "resolution_s": 1.0,
    }


def measure(bench: Bench) -> dict[str, Any]:
    reason = unavailable()
    if reason:
        return {"slurm": {"skipped": reason}}
    run_dir = bench.work / "pipeline_slurm"
    queued = _queue_length()
    run_child(python_module("mi_pipeline.submit", "--mode", "fresh", "--yes", "--executor", "slurm", "--run-dir",
                            str(run_dir), *bench.config_args(*bench.preset.slurm_overrides, *SETTINGS)),
              120, "submitting the pipeline to SLURM")
    ids = {s: r.job_id for s, r in ProgressFile(run_dir).read().stages.items() if r.job_id}
    rows = wait_finished(list(ids.values()), bench.preset.slurm_timeout_s)
    if rows is None:
        subprocess.run(["scancel", *ids.values()], check=False, timeout=30)  # only the jobs this run submitted
        return {"slurm": {"skipped": f"jobs not finished after {bench.preset.slurm_timeout_s:.0f} s "
                                     f"({queued} other job(s) queued at submit); cancelled", "job_ids": ids}}
    jobs = {s: rows[j] for s, j in ids.items()}
    failed = {s: j["state"] for s, j in jobs.items() if j["state"] != "COMPLETED"}
    if failed:
        raise RuntimeError(f"SLURM jobs did not complete: {failed} (job ids {ids}; logs in {run_dir}/logs)")
    return {"slurm": {"queue_at_submit": queued, "job_ids": ids, **summarise(jobs)}}
