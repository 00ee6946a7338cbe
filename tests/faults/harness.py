"""Shared machinery of the fault suite: the fork-server, reference runs, and the after-trial checks."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.errors import CheckpointError
from mi_pipeline.orchestration.progress import ProgressFile
from tests.helpers import env

HERE = Path(__file__).resolve().parent
PROCESSES = HERE.parent / "processes"  # helper programs the tests start
RUNNER = PROCESSES / "engine_runner.py"
EPOCHS = 6
SLEEP_PER_BATCH_S = 0.01  # 8 batches per epoch: training time comparable to checkpoint-writing time
SLOW_WRITE_S = 0.1  # test-only hook: every atomic write takes this much longer, so kills land inside writes
# (at 0.04 s, one full-suite run saw none of 48 kills land in a write once writes moved to a background thread)


class Zygote:
    """A fork-server process (zygote.py); ``start`` forks one real engine run and returns its pid."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(PROCESSES / "zygote.py")], env=env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _next(self, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"zygote gave no answer in {timeout}s") from None
        if not line:
            raise AssertionError(f"zygote exited ({self.proc.poll()})")
        return json.loads(line)

    def start(self, run_dir: Path, *, epochs: int = EPOCHS, sleep_s: float = SLEEP_PER_BATCH_S,
              slow_write_s: float = 0.0) -> int:
        assert self.proc.stdin is not None
        request = {"run_dir": str(run_dir), "epochs": epochs, "sleep_s": sleep_s, "slow_write_s": slow_write_s,
                   "log": str(Path(run_dir).parent / f"{Path(run_dir).name}.out")}
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(self._next(60)["pid"])

    def wait(self, timeout: float = 120) -> int:
        """Exit status of the last run: the exit code, or -N when signal N killed it."""
        return int(self._next(timeout)["status"])

    def run(self, run_dir: Path, **kwargs: float) -> tuple[int, float]:
        started = time.monotonic()
        self.start(run_dir, **kwargs)  # type: ignore[arg-type]
        status = self.wait()
        return status, time.monotonic() - started

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def ckpt_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "toy"


def weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(path)["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def temp_files(run_dir: Path) -> list[Path]:
    """Leftovers of interrupted atomic writes (fsio temp names) or staging folders, anywhere in the run."""
    return sorted(p for p in Path(run_dir).rglob("*") if p.name.startswith(".") and ".tmp" in p.name)


def unreadable_checkpoints(run_dir: Path) -> list[str]:
    """Every checkpoint file in the run that does not pass the product's validated load."""
    bad = []
    for path in sorted(ckpt_dir(run_dir).glob("*.pth*")):
        if path.name.startswith("."):
            continue  # temp files are counted by temp_files()
        try:
            ckpt.load_checkpoint(path)
        except CheckpointError as exc:
            bad.append(str(exc))
    return bad


@dataclass
class Reference:
    best: dict[str, torch.Tensor]
    last: dict[str, torch.Tensor]
    seconds: float  # how long one zygote run takes with the slow-write hook on (the kill window)


@dataclass
class Tally:
    """What a batch of trials saw; printed and written to docs/RELIABILITY.md by hand from a soak run."""

    trials: int = 0
    completed: int = 0
    identical_weights: int = 0
    faults_injected: int = 0
    landed_in_write: int = 0  # kills after which an atomic write's temp file was on disk
    landed_after_exit: int = 0
    graceful: int = 0
    mid_epoch: int = 0
    unreadable_checkpoints: int = 0
    temp_files_left: int = 0
    progress_unparsable: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        shown = {k: v for k, v in self.__dict__.items() if k != "problems"}
        return "FAULT-TALLY " + json.dumps(shown, sort_keys=True)


def check_finished_run(run_dir: Path, ref: Reference, tally: Tally, label: str) -> None:
    """After the final resume: same weights as the uninterrupted run, nothing torn, nothing left over."""
    problems = []
    try:
        same = same_weights(weights(ckpt_dir(run_dir) / ckpt.LAST), ref.last) and \
            same_weights(weights(ckpt_dir(run_dir) / ckpt.BEST), ref.best)
    except CheckpointError as exc:
        same = False
        problems.append(f"final checkpoint unreadable: {exc}")
    if same:
        tally.identical_weights += 1
    else:
        problems.append("final weights differ from the uninterrupted run")
    bad = unreadable_checkpoints(run_dir)
    tally.unreadable_checkpoints += len(bad)
    problems += bad
    left = temp_files(run_dir)
    tally.temp_files_left += len(left)
    if left:
        problems.append(f"temp files left: {[str(p.relative_to(run_dir)) for p in left]}")
    progress = ProgressFile(run_dir).read()
    if progress.notes or progress.stages["motion"].status != "done" or progress.stages["motion"].epoch != EPOCHS:
        tally.progress_unparsable += 1
        problems.append(f"progress record wrong: {progress.notes} {progress.stages['motion']}")
    metrics = [json.loads(line)["epoch"] for line in (run_dir / "logs/toy/metrics.jsonl").read_text().splitlines()]
    if metrics != list(range(1, EPOCHS + 1)):
        problems.append(f"metrics.jsonl epochs {metrics}")
    tally.problems += [f"{label}: {p}" for p in problems]


def trial_count(soak: bool, default: int, soak_n: int, env_name: str) -> int:
    """Trials to run: the env variable wins (e.g. MI_PIPELINE_FAULT_TRIALS=500), then soak/default."""
    if os.environ.get(env_name):
        return int(os.environ[env_name])
    return soak_n if soak else default
