"""Item 4: process start -> training loop, resuming the motion stage from ``last.pth`` vs a fresh start.

Both are real ``python -m mi_pipeline.train --stage motion`` processes on a copy of the trained run's
cache. "Training starts" is the engine's own log line just before its loop -- ``no last.pth: starting
at epoch 1`` or ``resuming from last.pth at ...`` -- read from the child's stderr as it is written
(train.log's timestamps have one-second resolution). What follows that line is the same for both.
The child is then killed (SIGKILL): ``last.pth`` is only ever replaced atomically, so it survives
for the next repeat. Beside the wall-time ratio, the same ratio of the children's CPU time (which
other processes' load barely moves). The ``last.pth`` is a real mid-epoch one, written by the engine when asked to stop.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from benchmarks.perf.probe import QuietLog
from benchmarks.perf.timing import Stamp, clock, paired_stamps
from benchmarks.perf.workspace import REPO, Bench, child_env, python_module
from mi_pipeline.config import stage_hash, to_dict
from mi_pipeline.data import cache
from mi_pipeline.engine.trainer import FitContext, Interrupted, fit
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.progress import FILENAME
from mi_pipeline.stages.registry import make_task

STAGE = "motion"
FRESH_LINE = "no last.pth: starting at epoch 1"
RESUME_LINE = "resuming from last.pth at"
TIMEOUT_S = 180.0


def _copy_cache(src: Path, dst: Path) -> None:
    for folder in (cache.cache_dir, cache.splits_dir):
        shutil.copytree(folder(src), folder(dst), dirs_exist_ok=True)


def _reset(run_dir: Path) -> None:
    """Back to "data prepared, motion never trained"."""
    for path in (run_dir / "checkpoints", run_dir / "logs"):
        shutil.rmtree(path, ignore_errors=True)
    (run_dir / FILENAME).unlink(missing_ok=True)


def write_mid_epoch_last(bench: Bench, run_dir: Path) -> None:
    """Train one batch through the engine and stop: the engine saves its exact position in last.pth."""
    layout, cfg = RunLayout(run_dir), bench.cfg
    ctx = FitContext(ckpt_dir=layout.ckpt_dir(STAGE), log=QuietLog(layout.log_dir(STAGE), STAGE), seed=cfg.seed,
                     config_hash=stage_hash(cfg, STAGE), config=to_dict(cfg), device=bench.device,
                     stop_requested=lambda: True)
    try:
        fit(make_task(STAGE, cfg, run_dir), cfg.motion, ctx)
    except Interrupted:
        return
    raise RuntimeError("the engine did not stop when asked; no mid-epoch last.pth to resume from")


def start_to_line(argv: list[str], marker: str) -> Stamp:
    """Start a child; once ``marker`` appears on its stderr, kill it. Returns the wall seconds from start
    to the marker and the child's CPU seconds (user + system, all threads) until it was killed."""
    start = clock()
    proc = subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    kill = functools.partial(os.kill, proc.pid, signal.SIGKILL)  # not proc.kill(): that may reap it first
    timer = threading.Timer(TIMEOUT_S, kill)
    timer.start()
    seen: list[str] = []
    wall = None
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if marker in line:
                wall = clock() - start
                break
            seen.append(line.rstrip())
    finally:
        timer.cancel()
        timer.join()
        kill()
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it, with its resource usage
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.stderr is not None:
            proc.stderr.close()
    if wall is None:
        tail = "\n".join(seen[-6:])
        raise RuntimeError(f"train exited ({proc.returncode}) before logging {marker!r}:\n{tail}")
    return wall, usage.ru_utime + usage.ru_stime


def measure(bench: Bench) -> dict[str, Any]:
    fresh, resumed = bench.folder("resume/fresh"), bench.folder("resume/resumed")
    for run_dir in (fresh, resumed):
        _copy_cache(bench.trained_run(), run_dir)
    write_mid_epoch_last(bench, resumed)

    def start(run_dir: Path, marker: str) -> Stamp:
        argv = python_module("mi_pipeline.train", "--stage", STAGE, "--run-dir", str(run_dir), *bench.config_args())
        return start_to_line(argv, marker)

    def fresh_start() -> Stamp:
        _reset(fresh)
        return start(fresh, FRESH_LINE)

    timings, cpu = paired_stamps(fresh_start, lambda: start(resumed, RESUME_LINE), bench.preset.resume_repeats)
    return {
        "resume_latency_ratio": timings.ratio,
        "resume_latency_ratio_cpu_time": cpu.ratio,
        "resume": {"stage": STAGE, "last_pth_mb": round(RunLayout(resumed).last(STAGE).stat().st_size / 2**20, 3),
                   "marker_fresh": FRESH_LINE, "marker_resume": RESUME_LINE,
                   "pairs": timings.to_json(), "pairs_cpu_time": cpu.to_json()},
    }
