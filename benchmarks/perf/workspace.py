"""What every measurement shares: the size preset, the config, the scratch folder, the trained run.

Presets scale the work, never the method: ``full`` uses the config as given (the demo by default),
``quick`` shrinks the phantom and the epochs so the whole benchmark takes a minute or two, and
``smoke`` (tests only) is the smallest run that still exercises every measurement.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mi_pipeline.config import Config, load_config
from mi_pipeline.engine.task import TrainTask
from mi_pipeline.graph import MODEL_STAGES

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "demo.yaml"
TRAINED_STAGES = MODEL_STAGES  # the one list (graph.py)

# A small phantom (5 subjects, 3 slices, 48-pixel crop, 4 frames): every stage has a few batches.
SMALL_DATA = ("data.phantom.subjects=5", "data.phantom.size=64", "data.phantom.slices=3", "data.phantom.frames=8",
              "data.crop=48", "data.frames=4")
ONE_EPOCH = ("motion.epochs=1", "registration.epochs=1", "segmentation.epochs=1")


@dataclass(frozen=True)
class Preset:
    """How much work each measurement does."""

    name: str
    data_overrides: tuple[str, ...] = ()  # config --set items for every measurement
    pipeline_overrides: tuple[str, ...] = ()  # extra --set items for the orchestration run (epochs)
    repeats: int = 9  # interleaved (baseline, subject) pairs: short and many, as the load drifts in bursts
    warmup_steps: int = 3  # training steps discarded before timing
    measure_s: float = 1.2  # target seconds per timed training run (steps are calibrated to it)
    min_steps: int = 6
    checkpoint_repeats: int = 15
    cache_repeats: int = 5
    resume_repeats: int = 4
    scaling_crops: tuple[int, ...] = (32, 64, 96)
    scaling_batches: tuple[int, ...] = (4, 8, 16)
    scaling_base: tuple[int, int] = (64, 8)  # (crop, batch) every cell is compared with
    scaling_steps: int = 4
    scaling_repeats: int = 2
    ddp_repeats: int = 2
    ddp_steps: int = 12
    profile_steps: int = 4
    slurm: bool = True  # submit a small pipeline to SLURM when sbatch answers
    slurm_overrides: tuple[str, ...] = ONE_EPOCH
    slurm_timeout_s: float = 240.0


FULL = Preset(name="full", slurm_overrides=SMALL_DATA + ONE_EPOCH)
QUICK = Preset(
    name="quick", data_overrides=SMALL_DATA, pipeline_overrides=ONE_EPOCH,
    repeats=3, warmup_steps=1, measure_s=0.5, min_steps=4, checkpoint_repeats=7, cache_repeats=3, resume_repeats=2,
    scaling_crops=(32, 48), scaling_batches=(4, 8), scaling_base=(48, 8), scaling_steps=3, scaling_repeats=1,
    ddp_repeats=1, ddp_steps=6, profile_steps=2, slurm=False)
SMOKE = Preset(
    name="smoke", data_overrides=SMALL_DATA, pipeline_overrides=ONE_EPOCH,
    repeats=1, warmup_steps=1, measure_s=0.1, min_steps=2, checkpoint_repeats=3, cache_repeats=2, resume_repeats=1,
    scaling_crops=(32,), scaling_batches=(2, 4), scaling_base=(32, 4), scaling_steps=2, scaling_repeats=1,
    ddp_repeats=1, ddp_steps=3, profile_steps=1, slurm=False)
PRESETS = {p.name: p for p in (FULL, QUICK, SMOKE)}


@dataclass
class Bench:
    """One benchmark run: its inputs, its scratch folder, and what earlier measurements left for later ones."""

    preset: Preset
    config_path: Path
    work: Path
    device: torch.device
    cfg: Config = field(init=False)
    run_dir: Path | None = None  # the trained pipeline (set by the orchestration measurement)
    tasks: dict[str, TrainTask] = field(default_factory=dict)  # set-up tasks, shared by later measurements
    engine_step_s: dict[str, float] = field(default_factory=dict)  # steady-state step time through fit()

    def __post_init__(self) -> None:
        self.cfg = load_config(self.config_path, list(self.overrides))

    @property
    def overrides(self) -> tuple[str, ...]:
        return (*self.preset.data_overrides, f"device={self.device.type}")

    def config_args(self, *extra: str) -> list[str]:
        """``--config ... --set ...`` for a child ``python -m mi_pipeline.<cli>`` with this run's config."""
        args = ["--config", str(self.config_path)]
        for item in (*self.overrides, *extra):
            args += ["--set", item]
        return args

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def trained_run(self) -> Path:
        if self.run_dir is None:
            raise RuntimeError("needs the trained pipeline of the orchestration measurement, which did not finish")
        return self.run_dir


def child_env(**extra: str) -> dict[str, str]:
    """Environment of child processes: they import this checkout's package, unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_child(argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    """Run a child to completion; a failure raises with its error line. The child leads its own process
    group, so a timeout ends it together with what it started (stage processes, torchrun's ranks)."""
    proc = subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"{what} did not finish within {timeout:.0f} s (stopped)") from None
    if proc.returncode != 0:
        lines = (out + err).strip().splitlines()
        errors = [line for line in lines if re.match(r"^(error:|\w+(Error|Exception)\b)", line)]
        raise RuntimeError(f"{what} failed (exit status {proc.returncode}): "
                           + (errors[-1] if errors else "\n".join(lines[-8:])))
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def machine_snapshot() -> dict[str, Any]:
    """What else the machine was doing: load average and the busiest other processes."""
    snapshot: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()]}
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,ni,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10, check=False).stdout.splitlines()[1:]
        rows = [row for row in (line.split(None, 3) for line in out) if len(row) == 4]
        snapshot["busiest"] = [f"{cpu}% nice {ni} {args[:100]}" for pid, cpu, ni, args in rows
                               if float(cpu) >= 5.0 and int(pid) != os.getpid() and not args.startswith("ps ")][:6]
    except (OSError, subprocess.SubprocessError, ValueError):
        snapshot["busiest"] = []
    return snapshot


def filesystem_of(path: Path) -> str:
    """Filesystem type holding ``path`` (fsync costs differ: ext4 vs tmpfs vs NFS)."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind
