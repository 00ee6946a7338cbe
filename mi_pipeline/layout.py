"""The run-directory contract (DESIGN.md §4) and what is on disk in it.

    <run root>/.training_progress
    <run root>/checkpoints/<stage>/best_model.pth, last.pth
    <run root>/logs/<stage>/train.log, metrics.jsonl
    <run root>/data/splits/, data/cache/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mi_pipeline import MODEL_STAGES, STAGES
from mi_pipeline.data import cache
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.errors import CheckpointError
from mi_pipeline.progress import FILENAME, StageRecord


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def ckpt_dir(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage

    def log_dir(self, stage: str) -> Path:
        return self.root / "logs" / stage

    def best(self, stage: str) -> Path:
        return self.ckpt_dir(stage) / ckpt.BEST

    def last(self, stage: str) -> Path:
        return self.ckpt_dir(stage) / ckpt.LAST

    def train_log(self, stage: str) -> Path:
        return self.log_dir(stage) / "train.log"

    def fresh_targets(self) -> list[Path]:
        """What mode *fresh* deletes: exactly the seed guide's list."""
        return ([self.ckpt_dir(s) for s in MODEL_STAGES] + [self.log_dir(s) for s in MODEL_STAGES]
                + [self.root / FILENAME])


@dataclass(frozen=True)
class CheckpointHealth:
    """What a stage's checkpoint files say, without trusting them blindly."""

    best_ok: bool
    best_problem: str | None  # None, "missing" or the load error
    best_metric: float | None
    best_config_hash: str | None
    last_epoch: int | None  # completed epochs in last.pth (None: no usable last.pth)
    last_finished: bool
    last_problem: str | None


def inspect_stage(layout: RunLayout, stage: str) -> CheckpointHealth:
    best_ok, best_problem, metric, config_hash = False, "missing", None, None
    if layout.best(stage).exists():
        try:
            payload = ckpt.load_checkpoint(layout.best(stage), required=("model", "config_hash"))
            best_ok, best_problem = True, None
            metric, config_hash = payload.get("metric"), payload["config_hash"]
        except CheckpointError as exc:
            best_problem = str(exc)
    last_epoch, finished, last_problem = None, False, None
    if layout.last(stage).exists():
        try:
            payload = ckpt.load_checkpoint(layout.last(stage), required=("model", "state"))
            last_epoch, finished = int(payload["state"]["epoch"]), bool(payload.get("finished"))
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            last_problem = str(exc)
    return CheckpointHealth(best_ok, best_problem, metric, config_hash, last_epoch, finished, last_problem)


def rebuild_records(layout: RunLayout) -> dict[str, StageRecord]:
    """Per-stage records derived only from files on disk (used when the progress file is corrupt)."""
    records = {stage: StageRecord() for stage in STAGES}
    if cache.read_manifest(layout.root) is not None:
        records["data"] = StageRecord(status="done", note="rebuilt: data cache present")
    for stage in MODEL_STAGES:
        health = inspect_stage(layout, stage)
        if health.best_ok and (health.last_finished or health.last_epoch is None):
            records[stage] = StageRecord(status="done", best_metric=health.best_metric,
                                         epoch=health.last_epoch or 0, note="rebuilt: best_model.pth loads")
        elif health.last_epoch is not None:
            records[stage] = StageRecord(status="failed", epoch=health.last_epoch,
                                         note="rebuilt: last.pth shows unfinished training")
    return records
