"""Stage DAG x mode -> what to run, what to skip, and why (pure: reads the disk, writes nothing)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from mi_pipeline.config import Config, config_changes, only_longer_training, stage_hash
from mi_pipeline.errors import UserError
from mi_pipeline.graph import CINE_LABELS_SUFFICE, MODEL_STAGES, STAGES, downstream, left_out, upstream
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.health import CheckpointHealth, inspect_stage
from mi_pipeline.orchestration.progress import Progress

MODES = ("fresh", "resume", "skip")


@dataclass(frozen=True)
class Step:
    stage: str
    run: bool
    reason: str
    restart: bool = False  # train from scratch, setting the old last.pth aside
    decide: bool = False  # finished under another config: --force keeps it, --retrain-from retrains it
    left_out: bool = False  # the data cannot feed this stage (no LGE): not run, and not done either

    def describe(self) -> str:
        verb = ("DECIDE" if self.decide else "leave" if self.left_out else
                ("restart" if self.restart else "run") if self.run else "skip")
        return f"{verb:7} {self.stage:13} {self.reason}"


def make_plan(mode: str, layout: RunLayout, progress: Progress, data_ready: bool, cfg: Config | None = None,
              *, retrain_from: str | None = None, force: bool = False, lge: bool | None = None,
              cine_labels: bool | None = None) -> list[Step]:
    """What each stage does under ``mode``. With ``cfg``, a finished stage whose config changed since it
    was trained needs a decision (``decide``), unless only its epoch count went up (then it continues)
    or ``force`` keeps it; ``retrain_from`` retrains that stage and its dependants (old files kept aside).
    ``lge`` False (a cine-only dataset) leaves out the stages that learn from LGE images, but with
    ``cine_labels`` True segmentation runs on them, for the myocardium only (``graph.left_out``)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    omitted = left_out(lge, cine_labels)
    if retrain_from in omitted:
        raise UserError(f"--retrain-from {retrain_from}: this run's data has no LGE images, which {retrain_from} "
                        f"learns from (it is left out of the plan)")
    if mode == "fresh":
        return _cine_labels_note([_leave_out(Step(s, True, "fresh run"), omitted, cine_labels) for s in STAGES], lge)
    health = {s: inspect_stage(layout, s) for s in MODEL_STAGES}  # each stage's files read once
    steps = {s: _leave_out(_decide(mode, s, health.get(s), progress, data_ready), omitted, cine_labels)
             for s in STAGES}
    if cfg is not None and mode == "resume":
        for stage in MODEL_STAGES:
            if not steps[stage].run and not steps[stage].left_out:
                steps[stage] = _config_check(stage, steps[stage], cfg, health[stage], force)
    if retrain_from is not None:
        for stage in (retrain_from, *downstream(retrain_from)):
            if not steps[stage].left_out:
                steps[stage] = Step(stage, True, f"retrain from {retrain_from} requested", restart=stage != "data")
    for stage in STAGES:  # a stage that reruns makes its dependants stale
        if steps[stage].run:
            for child in downstream(stage):
                if not steps[child].run and not steps[child].left_out:
                    steps[child] = Step(child, True, f"depends on {stage}, which runs")
    return _cine_labels_note([steps[s] for s in STAGES], lge)


def keep_live_jobs(steps: Sequence[Step], live: Mapping[str, str], new_upstream: Collection[str] = (),
                   upstream_live: Mapping[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(kept, stale): stage -> job id, for the planned stages whose job SLURM still holds (``live``).

    A live job stays the stage's job (no duplicate is submitted) unless a stage it waits on gets a
    new job in this submission (here, or ``new_upstream`` planned elsewhere: a k-fold run's shared
    data job), or already has a live job submitted after it (a later job id, here or in
    ``upstream_live``: the top's data job that an earlier ``submit_chain.sh`` run replaced, seen from a
    fold). Such a job is stale: it started, or will start, on files about to be rebuilt, and it
    would not wait for the new ones -- it must be cancelled and submitted again after them.
    """
    omitted = tuple(s.stage for s in steps if s.left_out)
    new, kept, stale = set(new_upstream), {}, {}
    jobs = {**(upstream_live or {}), **live}
    for step in (s for s in steps if s.run):
        job_id = live.get(step.stage)
        ups = upstream(step.stage, omitted)
        if job_id and not any(up in new or submitted_after(jobs.get(up), job_id) for up in ups):
            kept[step.stage] = job_id
            continue
        if job_id:
            stale[step.stage] = job_id
        new.add(step.stage)
    return kept, stale


def submitted_after(job_id: str | None, other: str) -> bool:
    """Whether SLURM job ``job_id`` was submitted after ``other``: SLURM numbers jobs in submission order
    (until its ids wrap at MaxJobId, when a job kept by mistake is what happened before this check)."""
    return bool(job_id and job_id.isdigit() and other.isdigit() and int(job_id) > int(other))


NO_LGE = "the data has no LGE images, which this stage learns from (a cine-only dataset)"
MYOCARDIUM_ONLY = "trains the myocardium only, from the cine ED labels, because the data has no LGE images"


def _leave_out(step: Step, omitted: tuple[str, ...], cine_labels: bool | None) -> Step:
    """A stage the data cannot feed: ``leave``, saying why (not run, and not done either)."""
    if step.stage not in omitted:
        return step
    why = NO_LGE
    if step.stage in CINE_LABELS_SUFFICE:
        why += (" and not every subject has cine labels to learn from instead" if cine_labels is False else
                " and its cache does not count cine labels (made before it did: run the data stage again)")
    return Step(step.stage, False, f"left out: {why}", left_out=True)


def _cine_labels_note(steps: list[Step], lge: bool | None) -> list[Step]:
    """Without LGE, a stage cine labels teach says what it learns (and that registration is left out)."""
    if lge is not False:
        return steps
    return [replace(s, reason=f"{s.reason}; {MYOCARDIUM_ONLY} (registration left out)")
            if s.stage in CINE_LABELS_SUFFICE and not s.left_out else s for s in steps]


def _decide(mode: str, stage: str, health: CheckpointHealth | None, progress: Progress, data_ready: bool) -> Step:
    record = progress.stages[stage]
    if stage == "data":
        if data_ready and (mode == "skip" or record.status == "done"):
            return Step(stage, False, "data cache present and matches the config")
        return Step(stage, True, "data cache missing or made with another config" if record.status == "done"
                    else "not prepared yet")
    assert health is not None
    if mode == "skip":
        unfinished = _unfinished(health, record.status)
        if health.best_ok and unfinished is None:
            return Step(stage, False, "best_model.pth present and loads")
        if health.best_ok:  # the seed's skip means "trained"; a best_model.pth from epoch 1 is not that
            return Step(stage, True, f"best_model.pth exists but training has not finished ({unfinished}): continues")
        if health.best_problem != "missing":
            return Step(stage, True, f"best_model.pth is corrupted: {health.best_problem}", restart=True)
        return Step(stage, True, *_continue_or_restart(health, mode))
    # resume
    if record.status == "done":
        unfinished = _unfinished(health, "done")
        if health.best_ok and unfinished:  # e.g. a hand-written state that declares it trained
            return Step(stage, True, f"recorded done but training has not finished ({unfinished}): continues")
        if health.best_ok:
            return Step(stage, False, "already trained (progress record)")
        return Step(stage, True, f"progress says trained but best_model.pth is {health.best_problem}",
                    restart=True)
    return Step(stage, True, *_continue_or_restart(health, mode))


def _config_check(stage: str, step: Step, cfg: Config, health: CheckpointHealth, force: bool) -> Step:
    """A finished stage against the current config: unchanged, more epochs, or a change to decide on.

    Also a finished stage whose ``last.pth`` exists but cannot be read: nothing says whether its
    training ended, so its dependants must not simply build on it -- the user decides.
    """
    if health.last_problem is not None:
        if force:
            return Step(stage, False, "last.pth is unreadable; best_model.pth kept as trained (--force)")
        return Step(stage, False, f"last.pth is unreadable ({health.last_problem.split(': ', 1)[-1][:80]}), so "
                                  f"nothing says its training finished", decide=True)
    if health.best_config is None or health.best_config_hash == stage_hash(cfg, stage):
        return step
    changes = config_changes(health.best_config, cfg, stage)
    shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changes) or "the config hash"
    if only_longer_training(changes, stage) and health.last_epoch is not None:
        own = [(old, new) for k, old, new in changes if k == f"{stage}.epochs"]
        if not own or health.last_epoch >= own[0][1]:
            return step  # trained to the count asked (an upstream stage training longer is its own business)
        return Step(stage, True, f"epochs raised {own[0][0]} -> {own[0][1]}: continues from last.pth "
                                 f"at epoch {health.last_epoch}")
    if force:
        return Step(stage, False, f"trained under another config ({shown}); kept (--force)")
    return Step(stage, False, f"trained under another config: {shown}", decide=True)


def _unfinished(health: CheckpointHealth, status: str) -> str | None:
    """Why a stage with a best model is known not to have finished training, or None.

    A model trained by hand (best_model.pth and no last.pth) counts as finished, as in the seed.
    """
    if health.last_epoch is not None and not health.last_finished:
        return f"last.pth is at epoch {health.last_epoch}"
    if status in ("running", "pending"):
        return f"the record says {status}"
    return None


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
