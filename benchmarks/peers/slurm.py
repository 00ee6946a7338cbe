"""The live-cluster part (``--slurm``): preempt a running training job, let it requeue, time the way back.

For each tool with its own preemption handling, one SLURM batch job (``--requeue``, the worker under
``srun``) trains the race's epochs. After exactly ``kill_after`` steps (mid-epoch 2) the worker
writes a marker and waits; the parent sends the tool's preemption signal to the job's step with
``scancel --signal``:

* Lightning: ``SIGUSR1``, the ``requeue_signal`` of its ``SLURMEnvironment(auto_requeue=True)``;
  Lightning's handler saves ``hpc_ckpt_<n>.ckpt`` and runs ``scontrol requeue``. Its SIGTERM handler
  only logs ("Bypassing SIGTERM"), so the process trains on until SLURM kills it (KillWait).
* ours: ``SIGUSR2`` (what our jobs get ``signal_delay_s`` before the limit); the engine saves its
  exact position at the end of the current step and the worker runs ``scontrol requeue`` and exits,
  as the pipeline's submitit job does (``checkpoint()`` -> requeue).
* MONAI's trainer has no preemption handling (no signal handler, no requeue): not run.

SLURM then holds the requeued job (reason BeginTime: credential expiry + 1 s, ~11 s on this
cluster; releasing it early makes slurmd refuse the launch), the same for every tool. Figures: signal -> first step of
the requeued process (wall); steps lost = steps trained by
both processes together minus an uninterrupted run's; the final weights vs the uninterrupted run of
the same tool in the local race (same machine, same threads), bit for bit.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.peers.race import REPO, Race

SIGNALS = {"lightning": "USR1", "ours": "USR2"}
UNSUPPORTED = {"monai": "no preemption handling: no signal handler, no requeue"}
TIMEOUT_S = 420.0


def cluster_down_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch not on PATH (no SLURM here)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=20,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    if "up" not in out.split():
        return "no SLURM partition is up (start one: bash tests/slurm/cluster.sh start)"
    return None


def batch_script(race: Race, tool: str, out: Path, kill_after: int) -> str:
    argv = race.worker_argv(tool, out, "--freeze-after", str(kill_after), "--marker", str(out / "frozen"), "--trace",
                            "--slurm" if tool == "lightning" else "--stop-on-signal")
    command = " ".join(f"'{a}'" for a in argv)
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name=peers_{tool}",
        f"#SBATCH --output={out}/slurm-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=30",
        f"cd '{REPO}'",
        f"export PYTHONPATH='{REPO}'${{PYTHONPATH:+:$PYTHONPATH}}",
        "export PYTHONUNBUFFERED=1",
        f"srun {command}",
        "",
    ])


def _state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=20,
                             check=False).stdout
    return out.strip()


def _results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("result-*.json"))]


def round_trip(race: Race, tool: str, kill_after: int, reference: str | None) -> dict[str, Any]:
    out = race.work / "slurm" / tool
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    script = out / "job.sh"
    script.write_text(batch_script(race, tool, out, kill_after))
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True,
                         timeout=30).stdout.strip().split(";")[0]
    try:
        deadline = time.time() + TIMEOUT_S
        while not (out / "frozen").exists():
            if time.time() > deadline or _state(job) in ("", "FAILED", "COMPLETED", "CANCELLED"):
                raise RuntimeError(f"job {job} did not reach step {kill_after} (state {_state(job) or 'gone'}); "
                                   f"see {out}")
            time.sleep(0.1)
        signalled = time.time()
        subprocess.run(["scancel", f"--signal={SIGNALS[tool]}", job], check=True, timeout=30)
        seen: dict[str, float] = {}  # state -> when first seen after the signal
        while True:
            done = [r for r in _results(out) if r.get("slurm_restart_count", 0) >= 1 and "weights_sha256" in r]
            if done:
                break
            if time.time() > deadline:
                raise RuntimeError(f"job {job} did not train again within {TIMEOUT_S:.0f} s (state {_state(job)})")
            state = _state(job)
            if state == "PENDING" or (state == "RUNNING" and "PENDING" in seen):
                seen.setdefault(state, time.time())
            time.sleep(0.2)
        requeued = done[-1]
        while _state(job) not in ("", "COMPLETED"):  # let the job end before the next one starts
            if time.time() > deadline:
                break
            time.sleep(0.5)
    finally:
        if _state(job) not in ("", "COMPLETED"):
            subprocess.run(["scancel", job], check=False, timeout=30)
    steps = len((out / "steps.log").read_text().splitlines())
    total = requeued["epochs"] * requeued["batches_per_epoch"]
    return {"job": job, "signal": SIGNALS[tool], "signal_to_training_s": round(requeued["losses"][0][0] - signalled, 2),
            "pending_after_s": round(seen["PENDING"] - signalled, 2) if "PENDING" in seen else None,
            "running_again_after_s": round(seen["RUNNING"] - signalled, 2) if "RUNNING" in seen else None,
            "steps_trained": steps, "steps_uninterrupted": total, "steps_lost": steps - total,
            "resumed_from": requeued.get("resumed_from"), "restart_count": requeued.get("slurm_restart_count"),
            "bit_identical": requeued["weights_sha256"] == reference, "weights_sha256": requeued["weights_sha256"]}


def _median(trips: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in trips if r.get(key) is not None]
    return round(statistics.median(values), 2) if values else None


def measure(race: Race, raw: dict[str, Any], trips: int = 2) -> dict[str, Any]:
    """``trips`` round trips per tool, alternating tools; the median of the timings."""
    reason = cluster_down_reason()
    if reason:
        print(f"skipping the SLURM part: {reason}", file=sys.stderr)
        return {"skipped": reason}
    results: dict[str, Any] = {}
    tools = [t for t in race.tools if t != "bare"]
    for tool in tools:
        if tool in UNSUPPORTED:
            results[tool] = {"unsupported": UNSUPPORTED[tool]}
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools if t not in UNSUPPORTED}
    for trip in range(trips):
        for tool in (list(runs) if trip % 2 == 0 else list(runs)[::-1]):
            reference = raw["repeats"][0]["full"][tool]["weights_sha256"]
            try:
                runs[tool].append(round_trip(race, tool, raw["kill_after"], reference))
                print(f"  slurm: {tool} preempted, requeued, finished", file=sys.stderr, flush=True)
            except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                runs[tool].append({"error": str(exc)})
                print(f"  slurm: {tool}: {exc}", file=sys.stderr, flush=True)
    for tool, done in runs.items():
        ok = [r for r in done if "error" not in r]
        if not ok:
            results[tool] = {"error": done[-1]["error"], "trips": done}
            continue

        results[tool] = {"trips": done, "signal_to_training_s": _median(ok, "signal_to_training_s"),
                         "pending_after_s": _median(ok, "pending_after_s"),
                         "running_again_after_s": _median(ok, "running_again_after_s"),
                         "steps_lost": [r["steps_lost"] for r in ok], "bit_identical": [r["bit_identical"] for r in ok]}
    return results
