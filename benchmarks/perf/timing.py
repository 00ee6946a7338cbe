"""The one way the benchmark times things: interleaved repeats, medians, ratios.

Why: this machine is shared, and its speed drifts by 2-20x within minutes (other jobs; OpenMP threads
descheduled mid-barrier). An absolute time measured here means little; a ratio of two things measured
*alternately* in the same run, each repeat paired with its neighbour and summarised by the median,
survives the drift. Every headline figure of the benchmark is such a ratio.
"""

from __future__ import annotations

import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

clock = time.perf_counter
cpu_clock = time.process_time  # all threads of this process; barely moved by other processes' load
Stamp = tuple[float, float]  # (wall, cpu)


def stamp() -> Stamp:
    return clock(), cpu_clock()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass
class Paired:
    """Repeated (baseline, subject) measurements, taken alternately (ABBA) so drift hits both."""

    baseline: list[float] = field(default_factory=list)
    subject: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [s / b for b, s in zip(self.baseline, self.subject) if b > 0]

    @property
    def ratio(self) -> float:
        """Median of the per-pair ratios subject / baseline (pairs share the machine's mood)."""
        return round(median(self.ratios), 4)

    def to_json(self, scale: float = 1.0, unit: str = "s") -> dict[str, Any]:
        return {f"baseline_{unit}": [round(v * scale, 4) for v in self.baseline],
                f"subject_{unit}": [round(v * scale, 4) for v in self.subject],
                f"baseline_median_{unit}": round(median(self.baseline) * scale, 4),
                f"subject_median_{unit}": round(median(self.subject) * scale, 4),
                "ratios": [round(r, 4) for r in self.ratios], "ratio": round(self.ratio, 4)}


def paired(baseline: Callable[[], float], subject: Callable[[], float], repeats: int) -> Paired:
    """Run both ``repeats`` times, alternating which goes first; each callable returns its own seconds."""
    result = Paired()
    for r in range(repeats):
        if r % 2 == 0:
            result.baseline.append(baseline())
            result.subject.append(subject())
        else:
            result.subject.append(subject())
            result.baseline.append(baseline())
    return result


def paired_stamps(baseline: Callable[[], Stamp], subject: Callable[[], Stamp], repeats: int) -> tuple[Paired, Paired]:
    """``paired`` for callables that return (wall, cpu) seconds: the wall-time and the CPU-time pairs."""
    wall, cpu = Paired(), Paired()
    for r in range(repeats):
        runs = ((baseline, wall.baseline, cpu.baseline), (subject, wall.subject, cpu.subject))
        for fn, walls, cpus in (runs if r % 2 == 0 else runs[::-1]):
            w, c = fn()
            walls.append(w)
            cpus.append(c)
    return wall, cpu


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = clock()
    fn()
    return clock() - start


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def traced_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak Python/numpy heap allocated while ``fn`` runs (tracemalloc sees numpy buffers, not torch's)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def rotate(items: list[Any], shift: int) -> list[Any]:
    """``items`` starting at ``shift``: each repeat runs the variants in another order."""
    if not items:
        return items
    shift %= len(items)
    return items[shift:] + items[:shift]
