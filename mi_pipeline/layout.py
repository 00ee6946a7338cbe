"""The run-directory contract (DESIGN.md §4): where every file of a run lives, and nothing else.

    <run root>/.training_progress
    <run root>/checkpoints/<stage>/best_model.pth, last.pth
    <run root>/logs/<stage>/train.log, metrics.jsonl
    <run root>/data/splits/, data/cache/

Paths only: what the files *say* is read by ``orchestration/health.py`` (checkpoints) and
``orchestration/progress.py`` (the record); stages use it to find their upstream models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mi_pipeline.engine.checkpoint import BEST, LAST
from mi_pipeline.stages.graph import MODEL_STAGES

PROGRESS_FILE = ".training_progress"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def progress(self) -> Path:
        return self.root / PROGRESS_FILE

    def ckpt_dir(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage

    def log_dir(self, stage: str) -> Path:
        return self.root / "logs" / stage

    def best(self, stage: str) -> Path:
        return self.ckpt_dir(stage) / BEST

    def last(self, stage: str) -> Path:
        return self.ckpt_dir(stage) / LAST

    def train_log(self, stage: str) -> Path:
        return self.log_dir(stage) / "train.log"

    def fresh_targets(self) -> list[Path]:
        """What mode *fresh* deletes: exactly the seed guide's list."""
        return ([self.ckpt_dir(s) for s in MODEL_STAGES] + [self.log_dir(s) for s in MODEL_STAGES]
                + [self.progress])
