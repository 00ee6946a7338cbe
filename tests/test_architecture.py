"""The package's shape: imports point one way (commands -> orchestration -> inference/evaluation ->
stages -> engine/data -> config -> foundations), with no cycle and no library importing a command.

Every import counts, also those inside functions (they run too); only ``if TYPE_CHECKING:`` blocks
are left out, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mi_pipeline"

# Lower number = nearer the ground. A module may import its own layer and the layers below it.
# An entry ending in "." covers everything inside that package; others name one module exactly.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (0, ("mi_pipeline", "mi_pipeline.compat", "mi_pipeline.errors", "mi_pipeline.fsio", "mi_pipeline.graph",
         "mi_pipeline.cli")),
    (1, ("mi_pipeline.config", "mi_pipeline.config.")),
    (2, ("mi_pipeline.engine", "mi_pipeline.engine.", "mi_pipeline.data", "mi_pipeline.data.", "mi_pipeline.metrics",
         "mi_pipeline.layout", "mi_pipeline.ensemble")),
    (3, ("mi_pipeline.stages", "mi_pipeline.stages.", "mi_pipeline.clinical", "mi_pipeline.clinical.")),
    (4, ("mi_pipeline.inference", "mi_pipeline.evaluation", "mi_pipeline.cv_evaluation", "mi_pipeline.cohort")),
    (5, ("mi_pipeline.orchestration", "mi_pipeline.orchestration.")),
    (6, ("mi_pipeline.cli.", "mi_pipeline.__main__", "mi_pipeline.submit", "mi_pipeline.train", "mi_pipeline.status",
         "mi_pipeline.cancel", "mi_pipeline.evaluate", "mi_pipeline.predict", "mi_pipeline.phantom",
         "mi_pipeline.clean")),
]
COMMANDS = 6


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(name: str) -> int:
    """The layer of the most specific entry that covers ``name``."""
    matches = [(len(entry), rank) for rank, entries in LAYERS for entry in entries
               if name == entry or (entry.endswith(".") and name.startswith(entry))]
    assert matches, f"{name}: not in any layer of tests/test_architecture.py"
    return max(matches)[1]


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str) -> set[str]:
    """Package modules ``name`` imports anywhere in its body (``from a import b`` counts a.b when b is a module)."""
    tree = ast.parse(MODULES[name].read_text())
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mi_pipeline"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mi_pipeline") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer(name)


def test_imports_point_down_only() -> None:
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, deps in GRAPH.items() for b in deps if layer(b) > layer(a)]
    assert not wrong, "\n".join(wrong)


def test_no_library_module_imports_a_command() -> None:
    wrong = [f"{a} imports command {b}" for a, deps in GRAPH.items() if layer(a) < COMMANDS
             for b in deps if layer(b) == COMMANDS]
    assert not wrong, "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_checks_can_fail() -> None:
    """The walkers find a planted cycle and a planted upward import (so a pass means something)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert layer("mi_pipeline.orchestration.plan") > layer("mi_pipeline.stages.motion") > layer("mi_pipeline.config")
    assert layer("mi_pipeline.cli.submit") == COMMANDS and layer("mi_pipeline.cli") == 0


@pytest.mark.parametrize("command", ["submit", "train", "status", "cancel", "evaluate", "predict", "phantom"])
def test_entry_point_modules_are_thin(command: str) -> None:
    """``python -m mi_pipeline.<command>`` stays valid, and the file only forwards to ``cli/<command>.py``."""
    assert GRAPH[f"mi_pipeline.{command}"] <= {f"mi_pipeline.cli.{command}", "mi_pipeline.cli.common"}
