"""Commands people type on a busy login node start without torch, and end quietly on a closed pipe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mi_pipeline.engine.checkpoint import save_checkpoint
from mi_pipeline.layout import RunLayout
from tests.helpers import env

HEAVY = ("torch", "monai", "matplotlib", "tensorboard", "highdicom")
PROBE = """
import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module({module!r}, run_name="__main__")
except SystemExit:
    pass
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
"""


def modules_loaded(module: str, *args: str) -> list[str]:
    code = PROBE.format(argv=[module, *args], module=module, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], env=env(), text=True, capture_output=True, timeout=120)
    line = [x for x in result.stderr.splitlines() if x.startswith("HEAVY:")]
    assert line, result.stderr
    return [m for m in line[-1][len("HEAVY:"):].split(",") if m]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = RunLayout(tmp_path_factory.mktemp("run"))
    for stage in ("motion", "registration", "segmentation"):
        save_checkpoint(layout.best(stage), {"model": {"w": torch.ones(4)}, "config_hash": "h", "metric": 0.5})
        save_checkpoint(layout.last(stage), {"model": {"w": torch.ones(4)}, "state": {"epoch": 2},
                                             "finished": True, "config_hash": "h"})
    return layout.root


@pytest.mark.parametrize("module, args", [
    ("mi_pipeline.status", ("--run-dir", "{run}")),
    ("mi_pipeline.status", ("--run-dir", "{run}", "--json")),
    ("mi_pipeline.cancel", ("--run-dir", "{run}")),
    ("mi_pipeline.submit", ("--run-dir", "{run}", "--dry-run", "--executor", "local")),
    ("mi_pipeline.submit", ("--help",)),
    ("mi_pipeline.status", ("--help",)),
    ("mi_pipeline.cancel", ("--help",)),
    ("mi_pipeline.train", ("--help",)),
    ("mi_pipeline.clean", ("--help",)),
    ("mi_pipeline", ("chain", "--help")),
    ("mi_pipeline.predict", ("--help",)),
    ("mi_pipeline.predict", ("--cohort", "--help")),
    ("mi_pipeline.evaluate", ("--help",)),
    ("mi_pipeline.phantom", ("--help",)),
])
def test_everyday_commands_start_without_torch(trained: Path, module: str, args: tuple[str, ...]) -> None:
    """status, cancel and the plan read checkpoints through their metadata (no torch), so they answer
    on a run with trained models in a fraction of a second (timed in benchmarks, not here)."""
    loaded = modules_loaded(module, *(a.format(run=trained) for a in args))
    assert loaded == [], f"{module} {' '.join(args)} imported {loaded}"


def test_a_closed_pipe_ends_status_quietly(trained: Path) -> None:
    status = subprocess.Popen([sys.executable, "-m", "mi_pipeline.status", "--run-dir", str(trained), "--json"],
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert status.stdout is not None
    status.stdout.close()  # `| head` that has gone before status writes (it takes ~0.3 s to start)
    err = status.stderr.read() if status.stderr else b""
    status.wait(timeout=60)
    assert status.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err
