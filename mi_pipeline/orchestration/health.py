"""What a stage's checkpoint files say, read without trusting them blindly.

The plan, the menu, ``status`` and the rebuild of a corrupted progress record all ask here, so
"is this stage trained?" has one answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mi_pipeline.data import cache
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.errors import CheckpointError
from mi_pipeline.graph import MODEL_STAGES, STAGES
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.records import StageRecord


@dataclass(frozen=True)
class CheckpointHealth:
    """What a stage's checkpoint files say."""

    best_ok: bool
    best_problem: str | None  # None, "missing" or the load error
    best_metric: float | None
    best_config_hash: str | None
    best_config: dict[str, Any] | None  # the config best_model.pth was trained with (None: not recorded)
    last_epoch: int | None  # completed epochs in last.pth (None: no usable last.pth)
    last_finished: bool
    last_problem: str | None
    best_facts: dict[str, Any] = field(default_factory=dict)  # what the task said of the model (e.g. myocardium only)


@dataclass(frozen=True)
class StageFiles:
    """One read of a stage's two checkpoint files: their content (None when absent or unreadable)
    and why not. Everything that asks about a stage's checkpoints reads them once, here."""

    best: dict[str, Any] | None
    best_problem: str | None  # None, "missing" or the load error
    last: dict[str, Any] | None
    last_problem: str | None  # None (also when missing: see ``last_exists``) or the load error
    last_exists: bool

    @property
    def health(self) -> CheckpointHealth:
        best, last = self.best or {}, self.last
        config = best.get("config") if isinstance(best.get("config"), dict) else None
        last_epoch, finished = None, False
        if last is not None:
            last_epoch, finished = int(last["state"]["epoch"]), bool(last.get("finished"))
        facts: dict[str, Any] = best["facts"] if isinstance(best.get("facts"), dict) else {}
        return CheckpointHealth(self.best is not None, self.best_problem, best.get("metric"),
                                best.get("config_hash"), config, last_epoch, finished, self.last_problem, facts)


def read_stage(layout: RunLayout, stage: str, *, full: bool = False) -> StageFiles:
    """Read ``best_model.pth`` and ``last.pth`` of ``stage`` once each, never trusting them blindly.

    Without ``full`` only their plain values are read (``checkpoint.read_metadata``: no torch, so
    ``status``, the menu and the plan stay quick); with it ``last.pth`` is loaded whole, tensors and
    all, for training to continue from.
    """
    load_last = ckpt.load_checkpoint if full else ckpt.read_metadata
    best: dict[str, Any] | None = None
    best_problem: str | None = "missing"
    if layout.best(stage).exists():
        try:
            best, best_problem = ckpt.read_metadata(layout.best(stage), required=("model", "config_hash")), None
        except CheckpointError as exc:
            best_problem = str(exc)
    last, last_problem = None, None
    if layout.last(stage).exists():
        try:
            last = load_last(layout.last(stage), required=("model", "state"))
            int(last["state"]["epoch"])
        except CheckpointError as exc:
            last, last_problem = None, str(exc)
        except (KeyError, TypeError, ValueError):
            last, last_problem = None, f"{layout.last(stage)}: incomplete checkpoint, its training state is unusable"
    return StageFiles(best, best_problem, last, last_problem, layout.last(stage).exists())


def inspect_stage(layout: RunLayout, stage: str) -> CheckpointHealth:
    return read_stage(layout, stage).health


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
