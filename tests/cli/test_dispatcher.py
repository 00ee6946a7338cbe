"""``python -m mi_pipeline``: lists every command with one line, and runs each one."""

from __future__ import annotations

import pytest

from mi_pipeline.cli import COMMANDS
from tests.helpers import run_module


def test_help_lists_every_command_with_what_it_does() -> None:
    out = run_module("mi_pipeline", "--help")
    assert out.returncode == 0, out.stderr
    for name, summary in COMMANDS.items():
        assert f"  {name}" in out.stdout and summary in out.stdout
    assert "python -m mi_pipeline <command> --help" in out.stdout


def test_unknown_command_is_one_error_and_the_list() -> None:
    out = run_module("mi_pipeline", "fly")
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown command 'fly'") and "submit" in out.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help_both_ways(command: str) -> None:
    """Through the dispatcher (what ``apptainer run IMAGE <command>`` uses) and, except the wrappers'
    ``chain``, as ``python -m mi_pipeline.<command>`` (the documented entry points)."""
    modules = [("mi_pipeline", command, "--help")]
    if command != "chain":
        modules.append((f"mi_pipeline.{command}", "--help"))
    for module, *args in modules:
        out = run_module(module, *args)
        assert out.returncode == 0, f"{module} {args}: {out.stderr}"
        assert "usage:" in out.stdout
