"""Deterministic mode is on for the whole process, and switching it on does not load the compiler stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import env

PROBE = """
import sys, torch
from mi_pipeline.engine.determinism import inductor_follows_determinism, setup_determinism
setup_determinism(0, 1, True, torch.device("cpu"))
print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
      "torch._inductor" in sys.modules)
inductor_follows_determinism()
import torch._inductor.config as inductor
print(inductor.deterministic)
"""


@pytest.mark.slow
def test_deterministic_mode_without_importing_inductor_until_compiling() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env(), capture_output=True, text=True, timeout=120,
                         check=True).stdout.split("\n")
    assert out[0] == "True False False"  # on, errors (not warnings) on CPU, no ~2 s Inductor import
    assert out[1] == "True"  # what torch.use_deterministic_algorithms would have told Inductor
