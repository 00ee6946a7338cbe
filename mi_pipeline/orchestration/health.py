"""What a stage's checkpoint files say, read without trusting them blindly.

The plan, the menu, ``status`` and the rebuild of a corrupted progress record all ask here, so
"is this stage trained?" has one answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mi_pipeline.data import cache
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.errors import CheckpointError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.progress import StageRecord
from mi_pipeline.stages.graph import MODEL_STAGES, STAGES


@dataclass(frozen=True)
class CheckpointHealth:
    """What a stage's checkpoint files say."""

    best_ok: bool
    best_problem: str | None  # None, "missing" or the load error
    best_metric: float | None
    best_config_hash: str | None
    best_config: dict | None  # the config best_model.pth was trained with (None: not recorded)
    last_epoch: int | None  # completed epochs in last.pth (None: no usable last.pth)
    last_finished: bool
    last_problem: str | None


def inspect_stage(layout: RunLayout, stage: str) -> CheckpointHealth:
    best_ok, best_problem, metric, config_hash, config = False, "missing", None, None, None
    if layout.best(stage).exists():
        try:
            payload = ckpt.load_checkpoint(layout.best(stage), required=("model", "config_hash"))
            best_ok, best_problem = True, None
            metric, config_hash = payload.get("metric"), payload["config_hash"]
            config = payload.get("config") if isinstance(payload.get("config"), dict) else None
        except CheckpointError as exc:
            best_problem = str(exc)
    last_epoch, finished, last_problem = None, False, None
    if layout.last(stage).exists():
        try:
            payload = ckpt.load_checkpoint(layout.last(stage), required=("model", "state"))
            last_epoch, finished = int(payload["state"]["epoch"]), bool(payload.get("finished"))
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            last_problem = str(exc)
    return CheckpointHealth(best_ok, best_problem, metric, config_hash, config, last_epoch, finished, last_problem)


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
