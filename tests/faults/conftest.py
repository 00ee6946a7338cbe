"""Fault-injection suite options: ``--soak`` (or env MI_PIPELINE_SOAK=1) for the large trial counts.

Run: ``python -m pytest tests/faults`` (default, CI-sized) or ``python -m pytest tests/faults --soak``.
The option is registered here, so pass it with ``tests/faults`` on the command line.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="fault suite: run the large trial counts (kill -9 N>=200, 8x500 writers, ...)")


def soak_enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--soak", default=False)) or os.environ.get("MI_PIPELINE_SOAK", "") not in ("", "0")


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    return soak_enabled(request.config)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One uninterrupted toy run in a fresh interpreter, reproduced by the fork-server with and without the
    slow-write hook (so forked trials and the hook provably change nothing about the result)."""
    import subprocess
    import sys

    from tests.faults import harness
    from tests.helpers import env

    base = tmp_path_factory.mktemp("reference")
    fresh = base / "fresh"
    done = subprocess.run([sys.executable, str(harness.RUNNER), str(fresh), str(harness.EPOCHS),
                           str(harness.SLEEP_PER_BATCH_S)], env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    best = harness.weights(harness.ckpt_dir(fresh) / "best_model.pth")
    last = harness.weights(harness.ckpt_dir(fresh) / "last.pth")
    zygote = harness.Zygote()
    try:
        status, _ = zygote.run(base / "forked")
        assert status == 0, (base / "forked.out").read_text()
        status, seconds = zygote.run(base / "forked_slow", slow_write_s=harness.SLOW_WRITE_S)
        assert status == 0, (base / "forked_slow.out").read_text()
    finally:
        zygote.close()
    for run in ("forked", "forked_slow"):
        assert harness.same_weights(harness.weights(harness.ckpt_dir(base / run) / "last.pth"), last), run
        assert harness.same_weights(harness.weights(harness.ckpt_dir(base / run) / "best_model.pth"), best), run
    return harness.Reference(best=best, last=last, seconds=seconds)


TINY = "tests/configs/tiny.yaml"


def cli(module: str, *args: str, timeout: float = 600):  # type: ignore[no-untyped-def]
    """Run ``python -m mi_pipeline.<module>`` from the repo root (the configs' relative paths)."""
    from tests.helpers import REPO, run_module

    return run_module(f"mi_pipeline.{module}", *args, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A run dir (tiny config) after step 1: phantom + cache + splits. Tests copy it."""
    run = tmp_path_factory.mktemp("prepared") / "run"
    done = cli("train", "--stage", "data", "--config", TINY, "--run-dir", str(run))
    assert done.returncode == 0, done.stderr
    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, prepared_run):  # type: ignore[no-untyped-def]
    """``prepared_run`` plus a finished motion stage (2 epochs): last.pth and best_model.pth on disk."""
    import shutil

    run = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(prepared_run, run, symlinks=True)
    done = cli("train", "--stage", "motion", "--config", TINY, "--run-dir", str(run), "--set", "motion.epochs=2")
    assert done.returncode == 0, done.stderr
    return run
