"""Stage DAG x mode -> what to run, what to skip, and why (pure: reads the disk, writes nothing)."""

from __future__ import annotations

from dataclasses import dataclass

from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.health import CheckpointHealth, inspect_stage
from mi_pipeline.orchestration.progress import Progress
from mi_pipeline.stages.graph import STAGES, downstream

MODES = ("fresh", "resume", "skip")


@dataclass(frozen=True)
class Step:
    stage: str
    run: bool
    reason: str
    restart: bool = False  # train from scratch, setting the old last.pth aside

    def describe(self) -> str:
        verb = ("restart" if self.restart else "run") if self.run else "skip"
        return f"{verb:7} {self.stage:13} {self.reason}"


def make_plan(mode: str, layout: RunLayout, progress: Progress, data_ready: bool) -> list[Step]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if mode == "fresh":
        return [Step(s, True, "fresh run") for s in STAGES]
    steps = {s: _decide(mode, s, layout, progress, data_ready) for s in STAGES}
    for stage in STAGES:  # a stage that reruns makes its dependants stale
        if steps[stage].run:
            for child in downstream(stage):
                if not steps[child].run:
                    steps[child] = Step(child, True, f"depends on {stage}, which runs")
    return [steps[s] for s in STAGES]


def _decide(mode: str, stage: str, layout: RunLayout, progress: Progress, data_ready: bool) -> Step:
    record = progress.stages[stage]
    if stage == "data":
        if data_ready and (mode == "skip" or record.status == "done"):
            return Step(stage, False, "data cache present and matches the config")
        return Step(stage, True, "data cache missing or made with another config" if record.status == "done"
                    else "not prepared yet")
    health = inspect_stage(layout, stage)
    if mode == "skip":
        if health.best_ok:
            return Step(stage, False, "best_model.pth present and loads")
        if health.best_problem != "missing":
            return Step(stage, True, f"best_model.pth is corrupted: {health.best_problem}", restart=True)
        return Step(stage, True, *_continue_or_restart(health, mode))
    # resume
    if record.status == "done":
        if health.best_ok:
            return Step(stage, False, "already trained (progress record)")
        return Step(stage, True, f"progress says trained but best_model.pth is {health.best_problem}",
                    restart=True)
    return Step(stage, True, *_continue_or_restart(health, mode))


def _continue_or_restart(health: CheckpointHealth, mode: str) -> tuple[str, bool]:
    if health.last_problem is not None:
        if mode == "skip":  # the user asked to retrain what is missing: do it, keeping the bad file
            return f"last.pth is unusable ({health.last_problem}): retraining from scratch", True
        return f"last.pth is unusable ({health.last_problem}): training will stop and say so", False
    if health.last_epoch is None:
        # under skip a missing stage is one the user deleted on purpose: nothing to lose
        return "not trained yet", mode == "skip"
    if health.last_finished and not health.best_ok:
        return "training finished but best_model.pth is missing: retraining", True
    return f"continues from last.pth after epoch {health.last_epoch}", False
