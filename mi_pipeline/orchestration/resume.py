"""May this stage continue from ``last.pth``? Decided once per stage start, from one read of its files.

The stage runner reads the stage's checkpoints once (``health.read_stage``), takes the planned
restart token out of the record, and asks :func:`decide`; the training loop then obeys the
``ResumeDecision`` (``engine.trainer.StartFrom``) instead of deciding again. Every rule about
continuing lives here: lost work, a changed config, only more epochs, other upstream models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mi_pipeline.config import Config, config_changes, only_longer_training, stage_hash
from mi_pipeline.engine.trainer import check_resumable, set_aside
from mi_pipeline.errors import CheckpointError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.health import StageFiles, read_stage

UpstreamPolicy = Literal["error", "restart"]


@dataclass(frozen=True)
class ResumeDecision:
    """How one attempt of a stage starts."""

    restart: bool  # from scratch; the old last.pth is already set aside
    payload: dict[str, Any] | None  # last.pth to continue from (None: epoch 1)
    accept_config_change: bool = False  # only the epoch counts changed: continue through the new hash
    notes: tuple[str, ...] = ()  # what the log should say about the decision


def decide(stage: str, cfg: Config, layout: RunLayout, *, restart: bool, recorded_epoch: int,
           upstream: dict[str, str], on_upstream_change: UpstreamPolicy, force: bool) -> ResumeDecision:
    """The decision for a model stage. ``restart``: asked for (``train --restart``) or a planned
    restart whose token this attempt took. Raises CheckpointError when continuing would lose work or
    build on something else than what was trained, with what to do."""
    if restart:
        set_aside(layout.last(stage), "restart")
        return ResumeDecision(True, None)
    files = read_stage(layout, stage)
    if files.last_problem is not None:
        raise CheckpointError(files.last_problem)
    if files.last is None:
        if recorded_epoch > 0:  # progress without a checkpoint is lost work: say so, never start over silently
            raise CheckpointError(
                f"{layout.last(stage)}: missing, but the progress record says {stage} reached epoch {recorded_epoch}; "
                f"refusing to start over silently (restore the file, or train with --restart)")
        return ResumeDecision(False, None)
    if files.last.get("upstream", {}) != upstream and upstream and not force and on_upstream_change == "restart":
        kept = set_aside(layout.last(stage), "stale")
        note = (f"last.pth was trained on older upstream models ({', '.join(sorted(upstream))}): restarting "
                f"{stage} from scratch (old file kept as {kept.name if kept else '-'})")
        return ResumeDecision(True, None, notes=(note,))
    more_epochs = _only_more_epochs(stage, cfg, files)
    check_resumable(layout.last(stage), files.last, stage_hash(cfg, stage), upstream, force=force,
                    accept_config_change=more_epochs)
    notes = (f"only epoch counts changed ({stage}.epochs is {getattr(cfg, stage).epochs}): continuing from "
             f"last.pth (the learning-rate schedule is recomputed for the new total)",) if more_epochs else ()
    return ResumeDecision(False, files.last, accept_config_change=more_epochs, notes=notes)


def _only_more_epochs(stage: str, cfg: Config, files: StageFiles) -> bool:
    """True when last.pth was made under this config but for epoch counts (its own raised)."""
    last, best = files.last, files.best
    if last is None or best is None or "config_hash" not in last or not isinstance(best.get("config"), dict):
        return False
    if last["config_hash"] == stage_hash(cfg, stage) or last["config_hash"] != best["config_hash"]:
        return False
    return only_longer_training(config_changes(best["config"], cfg, stage), stage)
