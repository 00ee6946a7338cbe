"""Every command's --help is complete and self-contained: it lists every option the README, docs/ and
the command's own docstring use with it, ends its description with a full sentence, and cites no
document or source file that is not in the repository."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest

from mi_pipeline.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]


def _help(command: str, *extra: str) -> str:
    module = importlib.import_module(f"mi_pipeline.cli.{command}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        module.main([*extra, "--help"])
    assert stop.value.code == 0
    return out.getvalue()


def _documented(command: str) -> dict[str, set[str]]:
    """Options used with ``command`` in README.md and docs/*.md (per line that runs it), and in its docstring;
    keyed by the help that must list them (predict's cohort mode has its own)."""
    found: dict[str, set[str]] = {"": set(), "--cohort": set()}
    pattern = re.compile(rf"mi_pipeline[. ]{command}\b[^`\n]*")
    texts = [p.read_text(encoding="utf-8") for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]]
    module = importlib.import_module(f"mi_pipeline.cli.{command}")
    for line in [m.group(0) for text in texts for m in pattern.finditer(text)] + (module.__doc__ or "").splitlines():
        key = "--cohort" if command == "predict" and "--cohort" in line else ""
        found[key] |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", line))
    return found


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_documented_option_and_cites_only_repository_files(command: str) -> None:
    for mode, options in _documented(command).items():
        text = _help(command, *([mode] if mode else []))
        missing = sorted(o for o in options if o not in text and o != "--help")
        assert not missing, f"{command} {mode} --help does not list {missing}"
        for cited in re.findall(r"[\w./-]+\.(?:md|rst)\b", text):
            assert (REPO / cited).is_file() or list(REPO.rglob(Path(cited).name)), f"{command}: cites {cited}"
        assert "\u00a7" not in text, f"{command}: cites a section of a document"
        for source in re.findall(r"mi_pipeline/[\w/]+\.py", text):
            assert (REPO / source).is_file(), f"{command}: cites {source}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_description_is_a_whole_sentence(command: str) -> None:
    text = _help(command)
    description = text.split("\n\n")[1].replace("\n", " ").strip()
    assert description.endswith((".", ")")), f"{command}: description stops mid-sentence: {description!r}"


def test_predict_help_names_cohort_mode_and_strict() -> None:
    text = _help("predict")
    assert "--cohort" in text and "--strict" in text and "exit 3" in text
    cohort = _help("predict", "--cohort")
    assert all(o in cohort for o in ("--executor", "--jobs", "--max-running"))
