"""Suite-wide settings: how tests are shared between the parallel workers (pytest-xdist).

The default run (``addopts`` in pyproject.toml) uses two workers with ``--dist loadgroup``. Most
tests spend their time in child processes (the CLI, SLURM jobs) or waiting on the cluster, so two
workers keep both cores busy. Each test file is one group, so a module-scoped fixture (a finished
run that several tests copy) is built once; ``tests/faults`` is one group because its session
fixtures (reference runs) are shared across its files, and ``tests/slurm`` (the cluster tier, ``-m
slurm``) because its tests share the one small cluster: run side by side, their jobs would queue
behind each other's and their timing checks would measure the queue.

The fast tier a developer runs while working is ``pytest -m "not slow"``: everything in ``SLOW_DIRS``
and every test marked ``slow`` (end-to-end trainings, multi-process runs) is left to the full run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SHARED_FIXTURE_DIRS = ("faults", "slurm")
SLOW_DIRS = ("faults", "slurm", "benchmarks")  # kill -9 campaigns, the live cluster, benchmark runs


def xdist_group(path: Path) -> str:
    relative = path.resolve().relative_to(TESTS)
    if relative.parts[0] in SHARED_FIXTURE_DIRS:
        return relative.parts[0]
    return relative.as_posix()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(Path(item.path))))
        if Path(item.path).resolve().relative_to(TESTS).parts[0] in SLOW_DIRS:
            item.add_marker(pytest.mark.slow)  # the fast tier (-m "not slow") leaves whole folders out
