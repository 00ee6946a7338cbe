"""``python -m benchmarks.perf``: the performance benchmark (issue #7), every figure a ratio measured in one run.

One module per measurement (engine overhead, checkpoint cost, cache speed, resume latency,
orchestration, SLURM scheduling, scaling, profiler summary, GPU switches), one timing helper
(``timing``), one instrumented engine run (``probe``); ``runner`` calls them in order and ``report``
prints the table. See docs/PERFORMANCE.md for the last full run and how to read it.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m benchmarks.perf`` (imported lazily: the DDP worker needs none of it)."""
    from benchmarks.perf.runner import main as run

    return run(argv)
