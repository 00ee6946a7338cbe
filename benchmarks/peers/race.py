"""The local race: every tool trained in its own process, in rotated order, repeated; then the figures.

One repeat = for each tool (order rotated every repeat, so drift in the machine's speed hits all):
an uninterrupted run of ``epochs`` epochs; then for each tool but the bare loop: a run that is
``kill -9``-ed after exactly ``kill_after`` steps (mid-epoch 2) and a new process that resumes it the
way that tool resumes. From the processes' own timestamps:

* step: median gap between consecutive loss calls inside an epoch (the first two steps of the run,
  and the gaps next to an epoch end, are left out); ratio to the bare loop of the same repeat;
* **checkpoint stall**: per epoch, the time the training loop spent inside the tool's checkpoint
  code (ours: the trainer's epoch-end ``record_epoch``, i.e. payloads + in-memory copy + handing
  them to the writer thread; Lightning: ``ModelCheckpoint``'s epoch-end hooks; MONAI: the two
  ``CheckpointSaver`` handlers), timed by thin wrappers; ours' background write (start -> durable)
  beside it. As a cross-check without wrappers: the epoch end = (second loss call of epoch k+1) -
  (last loss call of epoch k) - 2 x median step - validation, minus the bare loop's (no checkpoint),
  same repeat -- this also catches what a background write takes from the next step, but single
  steps are noisy on a shared machine;
* start-up: process start (the parent's ``Popen``) -> first loss call, fresh and resuming, in wall
  time and in the process's own CPU seconds up to that call (imports, set-up, loading the checkpoint);
* kill -9: steps the resumed process trains minus the steps that were left (= steps redone), and
  whether its final weights equal the uninterrupted run's, bit for bit. Ours writes a mid-epoch
  ``last.pth`` every ``OURS_EVERY_STEPS`` steps here (``performance.checkpoint_every_steps``; in
  production ``checkpoint_every_s``, 300 s, on epochs of minutes to hours) -- the peers as documented:
  Lightning's ``ModelCheckpoint`` and MONAI's ``CheckpointSaver`` at epoch ends;
* host syncs per step: reads of tensor values (``.item()``, ``bool(t)``, ...; benchmarks/peers/syncs.py)
  between consecutive loss calls inside an epoch, median; the task's own (the motion loss reads its
  two parts) are the bare loop's count, so a tool's own is its count minus the bare loop's.
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOOLS = ("bare", "ours", "lightning", "monai")
PEER_MODULES = {"lightning": "lightning", "monai": "ignite"}
OURS_EVERY_STEPS = 4  # ours: a mid-epoch last.pth every 4 steps (10 per epoch): a kill -9 redoes at most 4
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Preset:
    name: str
    overrides: tuple[str, ...]
    epochs: int
    repeats: int


# One thread for every tool: on a shared 2-core machine two OpenMP threads spin and wait for each
# other whenever a neighbour takes a core, which swings step times several-fold; one thread's CPU
# time is barely moved by the neighbours. (Same threads for all four is what matters.)
# 4 train subjects x 4 slices x 5 frame pairs = 80 samples: 10 batches of 8 at 32 px.
# performance.checkpoint_every_steps is read by ours alone (the other tools never look at it).
CADENCE = f"performance.checkpoint_every_steps={OURS_EVERY_STEPS}"
FULL = Preset("full", ("threads=1", CADENCE, "data.phantom.subjects=8", "data.phantom.size=64", "data.phantom.slices=4",
                       "data.phantom.frames=6", "data.crop=32", "data.frames=6"), epochs=3, repeats=3)
QUICK = Preset("quick", ("threads=1", CADENCE, "data.phantom.subjects=5", "data.phantom.size=64", "data.phantom.slices=2",
                         "data.phantom.frames=4", "data.crop=32", "data.frames=4"), epochs=2, repeats=1)
PRESETS = {p.name: p for p in (FULL, QUICK)}


@dataclass
class Race:
    preset: Preset
    config: Path
    work: Path
    tools: tuple[str, ...]
    timeout_s: float = 600.0
    log: list[str] = field(default_factory=list)

    @property
    def data_run(self) -> Path:
        return self.work / "data"

    def worker_argv(self, tool: str, out: Path, *extra: str) -> list[str]:
        argv = [sys.executable, "-m", "benchmarks.peers.worker", "--tool", tool, "--config", str(self.config),
                "--data-run", str(self.data_run), "--out", str(out), "--epochs", str(self.preset.epochs)]
        for item in self.preset.overrides:
            argv += ["--set", item]
        return argv + list(extra)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    for key in [k for k in env if k.startswith("SLURM_")]:  # a local run must not look like a SLURM job
        del env[key]
    return env


def prepare(race: Race) -> None:
    from mi_pipeline.config import load_config
    from mi_pipeline.data.prepare import prepare_data

    prepare_data(load_config(race.config, list(race.preset.overrides)), race.data_run, log=lambda _m: None)


def spawn(race: Race, argv: list[str], out: Path) -> tuple[subprocess.Popen, float]:
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(out / "stderr.log", "ab") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=err, stderr=err, start_new_session=True)
    return proc, started


def run_to_end(race: Race, argv: list[str], out: Path) -> dict[str, Any]:
    proc, started = spawn(race, argv, out)
    try:
        status = proc.wait(timeout=race.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError(f"{argv[5]} did not finish within {race.timeout_s:.0f} s; see {out / 'stderr.log'}") from None
    if status != 0:
        tail = (out / "stderr.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{argv[5]} exited {status}: " + " | ".join(tail))
    results = sorted(out.glob("result-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    record = json.loads(results[-1].read_text())
    record["spawned"] = started
    return record


def run_and_kill(race: Race, argv: list[str], out: Path, after: int) -> float:
    """Start a run that freezes after ``after`` steps; ``kill -9`` it there. Returns when it was killed."""
    marker = out / "frozen"
    proc, _ = spawn(race, argv + ["--freeze-after", str(after), "--marker", str(marker)], out)
    deadline = time.time() + race.timeout_s
    while not marker.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[5]} exited ({proc.returncode}) before step {after}; see {out / 'stderr.log'}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"{argv[5]} did not reach step {after} within {race.timeout_s:.0f} s")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the real thing: no handler runs, nothing is flushed
    proc.wait()
    return time.time()


def rotate(items: tuple[str, ...], shift: int) -> list[str]:
    shift %= len(items)
    return list(items[shift:] + items[:shift])


def run(race: Race) -> dict[str, Any]:
    """All the runs; returns the raw records ``{"repeats": [{"full": {tool: rec}, "killed": {tool: rec}}]}``."""
    prepare(race)
    epochs = race.preset.epochs
    repeats: list[dict[str, Any]] = []
    kill_after: int | None = None
    for r in range(race.preset.repeats):
        order = rotate(race.tools, r)
        rep: dict[str, Any] = {"order": order, "full": {}, "killed": {}}
        for tool in order:
            out = race.work / f"r{r}" / tool / "full"
            rep["full"][tool] = run_to_end(race, race.worker_argv(tool, out), out)
            print(f"  repeat {r + 1}: {tool} trained {epochs} epochs", file=sys.stderr, flush=True)
            if kill_after is None:
                nb = rep["full"][tool]["batches_per_epoch"]
                kill_after = nb + nb // 2  # the middle of epoch 2
        for tool in order:
            if tool == "bare":
                continue
            out = race.work / f"r{r}" / tool / "killed"
            argv = race.worker_argv(tool, out)
            assert kill_after is not None
            killed_at = run_and_kill(race, argv, out, kill_after)
            record = run_to_end(race, argv, out)
            record.update({"killed_at": killed_at, "kill_after": kill_after})
            rep["killed"][tool] = record
            print(f"  repeat {r + 1}: {tool} killed -9 after step {kill_after}, resumed", file=sys.stderr, flush=True)
        repeats.append(rep)
    return {"repeats": repeats, "kill_after": kill_after}


# --- figures -----------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def cut(record: dict[str, Any]) -> dict[str, Any]:
    """Steps and epoch ends of one uninterrupted run, from its loss-call and validation timestamps."""
    nb = record["batches_per_epoch"]
    walls = [w for w, _ in record["losses"]]
    cpus = [c for _, c in record["losses"]]
    epochs = len(walls) // nb
    steps, steps_cpu = [], []
    for e in range(epochs):
        for i in range(e * nb + 1, (e + 1) * nb - 1):  # gap i -> i+1 inside epoch e, not its first gap
            if i < 2:
                continue  # warm-up
            steps.append(walls[i + 1] - walls[i])
            steps_cpu.append(cpus[i + 1] - cpus[i])
    step = median(steps)
    step_cpu = median(steps_cpu)
    counts = record.get("syncs") or []
    syncs = [counts[i + 1] - counts[i] for e in range(epochs) for i in range(e * nb, (e + 1) * nb - 1)
             if i + 1 < len(counts)]
    ends, ends_cpu = [], []
    validations = [(w1 - w0, c1 - c0) for w0, c0, w1, c1 in record["validations"]]
    for e in range(epochs - 1):
        last, second = (e + 1) * nb - 1, (e + 1) * nb + 1
        if second < len(walls) and step is not None and step_cpu is not None:
            ends.append(walls[second] - walls[last] - 2 * step - validations[e][0])
            ends_cpu.append(cpus[second] - cpus[last] - 2 * step_cpu - validations[e][1])
    blocked: dict[int, list[float]] = {}  # epoch -> [wall, cpu] inside the tool's checkpoint calls
    for start, wall, cpu in record.get("saves", []):
        epoch = max(0, (bisect.bisect_right(walls, start) - 1) // nb)
        blocked.setdefault(epoch, [0.0, 0.0])
        blocked[epoch][0] += wall
        blocked[epoch][1] += cpu
    return {"step_s": step, "step_cpu_s": step_cpu, "epoch_end_s": median(ends), "epoch_end_cpu_s": median(ends_cpu),
            "save_blocked_s": median([w for w, _ in blocked.values()]),
            "save_blocked_cpu_s": median([c for _, c in blocked.values()]),
            "background_write_s": median([w for _, w in record.get("writes", [])]),
            "syncs_per_step": median(syncs),
            "validation_s": median([w for w, _ in validations]), "first_step_s": walls[0] - record["spawned"],
            "first_step_cpu_s": cpus[0]}


def figures(raw: dict[str, Any], tools: tuple[str, ...]) -> dict[str, Any]:
    per_tool: dict[str, dict[str, Any]] = {}
    for tool in tools:
        (ratios, ratios_cpu, stalls, stalls_cpu, extra_end, extra_end_cpu, writes, steps, ends, fresh, fresh_cpu, resumed,
         resumed_cpu, redone, identical, same_as_bare, syncs, own_syncs) = ([] for _ in range(18))
        files: dict[str, int] = {}
        for rep in raw["repeats"]:
            full, bare = cut(rep["full"][tool]), cut(rep["full"]["bare"])
            steps.append(full["step_s"])
            if full["syncs_per_step"] is not None and bare["syncs_per_step"] is not None:
                syncs.append(full["syncs_per_step"])
                own_syncs.append(full["syncs_per_step"] - bare["syncs_per_step"])
            ends.append(full["epoch_end_s"])
            fresh.append(full["first_step_s"])
            fresh_cpu.append(full["first_step_cpu_s"])
            ratios.append(full["step_s"] / bare["step_s"])
            ratios_cpu.append(full["step_cpu_s"] / bare["step_cpu_s"])
            extra_end.append(full["epoch_end_s"] - bare["epoch_end_s"])
            extra_end_cpu.append(full["epoch_end_cpu_s"] - bare["epoch_end_cpu_s"])
            if full["save_blocked_s"] is not None:
                stalls.append(full["save_blocked_s"])
                stalls_cpu.append(full["save_blocked_cpu_s"])
            if full["background_write_s"] is not None:
                writes.append(full["background_write_s"])
            same_as_bare.append(rep["full"][tool]["weights_sha256"] == rep["full"]["bare"]["weights_sha256"])
            files = rep["full"][tool].get("checkpoint_files", {})
            killed = rep["killed"].get(tool)
            if killed is not None:
                left = killed["epochs"] * killed["batches_per_epoch"] - killed["kill_after"]
                redone.append(len(killed["losses"]) - left)
                resumed.append(killed["losses"][0][0] - killed["spawned"])
                resumed_cpu.append(killed["losses"][0][1])  # CPU seconds of the process up to its first step
                identical.append(killed["weights_sha256"] == rep["full"][tool]["weights_sha256"])
        last_name = next((n for n in files if n.startswith("last")), None) or max(files, key=lambda n: n, default=None)
        per_tool[tool] = {
            "step_ms": _ms(median(steps)), "step_ratio": _r(median(ratios)), "step_ratio_cpu": _r(median(ratios_cpu)),
            "step_ratios": [_r(x) for x in ratios], "step_ratios_cpu": [_r(x) for x in ratios_cpu],
            "checkpoint_stall_ms": _ms(median(stalls)), "checkpoint_stalls_ms": [_ms(x) for x in stalls],
            "checkpoint_stall_cpu_ms": _ms(median(stalls_cpu)),
            "background_write_ms": _ms(median(writes)),
            "epoch_end_ms": _ms(median(ends)),
            "extra_epoch_end_vs_bare_ms": _ms(median(extra_end)), "extra_epoch_end_vs_bare_cpu_ms": _ms(median(extra_end_cpu)),
            "extra_epoch_ends_vs_bare_cpu_ms": [_ms(x) for x in extra_end_cpu],
            "checkpoint_files": files,
            "last_checkpoint_mb": round(files[last_name] / 2**20, 3) if last_name else None,
            "checkpoint_mb_per_epoch": round(sum(files.values()) / 2**20, 3) if files else None,
            "fresh_start_s": _r(median(fresh)), "resume_start_s": _r(median(resumed)) if resumed else None,
            "resume_starts_s": [_r(x) for x in resumed],
            "fresh_start_cpu_s": _r(median(fresh_cpu)), "resume_start_cpu_s": _r(median(resumed_cpu)),
            "resume_starts_cpu_s": [_r(x) for x in resumed_cpu],
            "syncs_per_step": syncs, "own_syncs_per_step": own_syncs,
            "steps_redone_after_kill": redone, "bit_identical_after_kill": identical,
            "weights_equal_bare_loop": same_as_bare,
            "resumed_from": [rep["killed"][tool].get("resumed_from") for rep in raw["repeats"] if tool in rep["killed"]],
            "threads": sorted({rep["full"][tool]["threads"] for rep in raw["repeats"]}),
        }
    return per_tool


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
