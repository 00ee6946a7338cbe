"""The run-directory contract: where every file of a run lives, and nothing else.

    <run root>/.training_progress
    <run root>/config.yaml                  the run's own config (written by the first submit)
    <run root>/checkpoints/<stage>/best_model.pth, last.pth
    <run root>/logs/<stage>/train.log, metrics.jsonl
    <run root>/logs/slurm/                  submitit's job folders (``slurm.job_dir``)
    <run root>/data/splits/, data/cache/

With k-fold cross-validation (``cv.folds`` K >= 2) each fold is a run of its own under the top:

    <run root>/data/splits/folds.json        the fold split, written once
    <run root>/folds/<k>/.training_progress  the fold's record (seed state names)
    <run root>/folds/<k>/checkpoints/, logs/ as above
    <run root>/folds/<k>/data/splits/        the fold's train / val / test lists
    <run root>/folds/<k>/data/cache          -> ../../../data/cache (the one shared cache)

so ``RunLayout(root).fold(k)`` is a ``RunLayout`` like any other and every command, stage and
rule that works on a run works on a fold unchanged.

Paths only: what the files *say* is read by ``orchestration/health.py`` (checkpoints) and
``orchestration/progress.py`` (the record); stages use it to find their upstream models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mi_pipeline.engine.checkpoint import BEST, LAST
from mi_pipeline.graph import MODEL_STAGES

PROGRESS_FILE = ".training_progress"
CONFIG_FILE = "config.yaml"
FOLDS_DIR = "folds"
DEFAULT_JOB_DIR = "logs/slurm"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def progress(self) -> Path:
        return self.root / PROGRESS_FILE

    @property
    def config_file(self) -> Path:
        """The run's own config: later commands without ``--config`` use it."""
        return self.root / CONFIG_FILE

    @property
    def submit_lock(self) -> Path:
        """Held by the one ``submit`` working on this run (see orchestration/submission.py)."""
        return self.root / ".submit.lock"

    @property
    def submit_holder(self) -> Path:
        """Who holds the submit lock (host, pid, since): what a second submitter is told."""
        return self.root / ".submit.holder"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def ckpt_dir(self, stage: str) -> Path:
        return self.checkpoints / stage

    def log_dir(self, stage: str) -> Path:
        return self.root / "logs" / stage

    def best(self, stage: str) -> Path:
        return self.ckpt_dir(stage) / BEST

    def last(self, stage: str) -> Path:
        return self.ckpt_dir(stage) / LAST

    def train_log(self, stage: str) -> Path:
        return self.log_dir(stage) / "train.log"

    def job_dir(self, job_dir: str = DEFAULT_JOB_DIR) -> Path:
        """Where SLURM jobs of this run leave their folders (``slurm.job_dir``, relative to the root)."""
        return self.root / job_dir

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def splits_dir(self) -> Path:
        return self.data_dir / "splits"

    @property
    def folds_dir(self) -> Path:
        return self.root / FOLDS_DIR

    @classmethod
    def holding(cls, checkpoint: str | Path) -> RunLayout:
        """The run a checkpoint file belongs to (``<root>/checkpoints/<stage>/<file>``)."""
        return cls(Path(checkpoint).resolve().parents[2])

    def fold(self, k: int) -> RunLayout:
        """Fold ``k``'s run directory (``folds/<k>``): the seed layout, sharing the top's data cache."""
        return RunLayout(self.folds_dir / str(k))

    @property
    def fold_index(self) -> int | None:
        """k when this layout is ``<top>/folds/<k>``, else None."""
        if self.root.parent.name == FOLDS_DIR and self.root.name.isdigit():
            return int(self.root.name)
        return None

    @property
    def top(self) -> RunLayout:
        """The run that holds this fold (itself for a run without folds)."""
        return RunLayout(self.root.parent.parent) if self.fold_index is not None else self

    def fresh_targets(self) -> list[Path]:
        """What mode *fresh* deletes: exactly the seed guide's list."""
        return ([self.ckpt_dir(s) for s in MODEL_STAGES] + [self.log_dir(s) for s in MODEL_STAGES]
                + [self.progress])
