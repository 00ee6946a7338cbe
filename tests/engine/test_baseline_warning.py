"""A task's notes and its baseline warning reach train.log: loud, one line, after the final epoch only
(early epochs trailing a trivial baseline is how training starts, not something to act on)."""

from __future__ import annotations

from pathlib import Path

from mi_pipeline.config import OptimConfig
from tests.engine.toy_task import ToyTask, fit_toy


class _NoBetterThanBaseline(ToyTask):
    def notes(self) -> list[str]:
        return ["targets: 3 of 4 subjects supervise"]

    def baseline_warning(self, metrics: dict[str, float]) -> str | None:
        return f"toy model does not beat its baseline (validation {metrics['epoch_hint']:g})"

    def validate(self, model, device):
        self.calls = getattr(self, "calls", 0) + 1
        return {**super().validate(model, device), "epoch_hint": float(self.calls)}


def test_notes_and_warning_lines_land_in_the_log(tmp_path: Path) -> None:
    fit_toy(tmp_path, _NoBetterThanBaseline(), OptimConfig(epochs=3, batch_size=8, lr=1e-2))
    lines = (tmp_path / "logs/toy/train.log").read_text().splitlines()
    assert any("targets: 3 of 4 subjects supervise" in line for line in lines)
    warnings = [i for i, line in enumerate(lines) if "WARNING: toy model does not beat its baseline" in line]
    final = next(i for i, line in enumerate(lines) if "epoch 3/3" in line)
    assert warnings == [final + 1] and "(validation 3)" in lines[final + 1]  # epochs 1 and 2 stay quiet
