"""A model-based test of the orchestrator: random sequences of what happens to a run on a cluster.

Real code under test: the plan (``make_plan``), the submitter (``run_slurm``: keeps live jobs, links
``afterok``, hands out restart tokens), mode fresh (``stop_in_flight`` + ``delete_for_fresh``), the
progress record, the stage runner (``train_stage``: restart decisions, lost-work checks, record
updates) and ``StageJob.checkpoint`` (the requeue hook). Simulated (mocks, on purpose, so hundreds of
sequences take seconds): the SLURM scheduler (pending/running/requeue/cancel, afterok with
kill-on-invalid-dep) behind submitit's executor, ``job_states`` and ``scancel``, and the training
loop (``fit``: one epoch = real atomic ``last.pth``/``best_model.pth`` files, no network).
The key scenarios also run for real on the live cluster (tests/slurm).

Invariants: a stage's trained epochs never go backwards except on fresh or a planned/explicit
restart; nothing is recorded done that did not finish; no stage starts against an unfinished
upstream; every job the record names exists; after fresh nothing of the old run survives.
``MI_PIPELINE_SOAK=1`` (the suite's soak switch) runs 2000 sequences of 40 steps instead of 150 of 25;
``MI_PIPELINE_ORCH_SEQUENCES=N`` runs N.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mi_pipeline.config import load_config
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.trainer import Interrupted, TrainState, set_aside
from mi_pipeline.graph import MODEL_STAGES, STAGES, UPSTREAM
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration import jobs, pipeline, slurm_executor, stage_runner
from mi_pipeline.orchestration.local_executor import StageCommand
from mi_pipeline.orchestration.plan import make_plan
from mi_pipeline.orchestration.progress import STATES, ProgressFile
from mi_pipeline.orchestration.submission import RunPlan, SlurmExecutor, Unit

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
OVERRIDES = ("motion.epochs=3", "registration.epochs=2", "segmentation.epochs=2")
SEQUENCES = int(os.environ.get("MI_PIPELINE_ORCH_SEQUENCES")
                or (2000 if os.environ.get("MI_PIPELINE_SOAK") == "1" else 150))
SOAK = SEQUENCES > 150
LIVE = ("PENDING", "RUNNING", "COMPLETING")


class Killed(BaseException):
    """kill -9 / node failure: the process ends with no handler run (train_stage catches Exception only)."""


@dataclasses.dataclass
class SimJob:
    id: str
    stage: str
    job: slurm_executor.StageJob
    deps: list[str]
    generation: int
    state: str = "PENDING"


class Scheduler:
    """Just enough SLURM: job states, afterok with kill-on-invalid-dep, requeue, scancel."""

    def __init__(self) -> None:
        self.jobs: dict[str, SimJob] = {}
        self.generation = 0
        self.run: RunModel | None = None

    def submit(self, job: slurm_executor.StageJob, deps: list[str]) -> str:
        job_id = str(100 + len(self.jobs))
        self.jobs[job_id] = SimJob(job_id, job.stage, job, deps, self.generation)
        return job_id

    def states(self, ids: list[str]) -> dict[str, str]:
        self.tick()  # each poll lets time pass: cancelled jobs finish saving
        return {j: self.jobs[j].state for j in ids if j in self.jobs}

    def scancel(self, ids: list[str]) -> None:
        for job_id in ids:
            job = self.jobs.get(job_id)
            if job and job.state == "RUNNING":
                job.state = "COMPLETING"  # got SIGTERM: saves its position, then ends
            elif job and job.state == "PENDING":
                job.state = "CANCELLED"

    def tick(self) -> None:
        for job in self.jobs.values():
            if job.state == "COMPLETING" and self.run is not None:
                self.run.attempt(job, "sigterm", 0)
                job.state = "CANCELLED"
        for job in self.jobs.values():  # kill-on-invalid-dep
            if job.state == "PENDING" and any(self.jobs[d].state in ("FAILED", "CANCELLED") for d in job.deps):
                job.state = "CANCELLED"

    def startable(self) -> list[SimJob]:
        return [j for j in self.jobs.values() if j.state == "PENDING"
                and all(self.jobs[d].state == "COMPLETED" for d in j.deps)]


class SimExecutor:
    """Stands in for submitit.AutoExecutor: the scheduler above instead of sbatch."""

    scheduler: Scheduler

    def __init__(self, folder: Path, **_: object) -> None:
        self.deps: list[str] = []
        self.folder = Path(folder)

    def update_parameters(self, **params: object) -> None:
        dependency = params.get("slurm_additional_parameters", {}).get("dependency", "")
        self.deps = dependency.removeprefix("afterok:").split(":") if dependency else []

    def submit(self, job: slurm_executor.StageJob):
        job_id = self.scheduler.submit(job, self.deps)
        (self.folder.parent / job_id).mkdir(parents=True, exist_ok=True)  # as submitit does (folder .../%j)
        return type("Job", (), {"job_id": job_id})()


class RunModel:
    """One run directory driven through the real orchestrator; tracks what must hold."""

    def __init__(self, root: Path, scheduler: Scheduler) -> None:
        self.root, self.scheduler = root, scheduler
        self.layout = RunLayout(root)
        self.progress = ProgressFile(root)
        self.cfg = load_config(TINY, OVERRIDES)
        self.command = StageCommand(config=TINY, overrides=OVERRIDES, run_dir=root)
        self.epochs = {s: getattr(self.cfg, s).epochs for s in MODEL_STAGES}
        self.seen_epoch = {s: 0 for s in MODEL_STAGES}
        self.restarted: set[str] = set()
        self.violations: list[str] = []
        self.budget = 0
        self.ending = "finish"
        self.current: SimJob | None = None

    # --- the simulated training loop (replaces engine.trainer.fit) ---------------------------------
    def fit(self, task, optim, ctx):
        stage = ctx.ckpt_dir.name
        last = ctx.ckpt_dir / ckpt.LAST
        if ctx.restart:
            set_aside(last, "restart")
            self.restarted.add(stage)
        for up in UPSTREAM[stage]:
            if up != "data" and not self._finished(up):
                self.violations.append(f"{stage} started while {up} had not finished training")
        epoch = 0 if ctx.restart or not last.exists() else ckpt.load_checkpoint(last, ("state",))["state"]["epoch"]
        generation = self.current.generation if self.current else self.scheduler.generation
        for _ in range(self.budget):
            if epoch >= optim.epochs:
                break
            epoch += 1
            payload = {"model": {"w": torch.full((1,), float(epoch))}, "state": {"epoch": epoch},
                       "finished": epoch >= optim.epochs, "config_hash": ctx.config_hash, "upstream": ctx.upstream,
                       "generation": generation}
            ckpt.save_checkpoint(ctx.ckpt_dir / ckpt.BEST, {**payload, "metric": float(epoch), "stage": stage,
                                                             "config": ctx.config})
            ckpt.save_checkpoint(last, payload)
            ctx.on_epoch(TrainState(epoch=epoch, best_metric=float(epoch)), {})
        state = TrainState(epoch=epoch, best_metric=float(epoch))
        if epoch >= optim.epochs:
            return state
        if self.ending == "kill9":
            raise Killed
        raise Interrupted(state)

    def _finished(self, stage: str) -> bool:
        """False only on evidence: a readable last.pth that says unfinished, or no model at all. (A
        last.pth the user corrupted after the stage finished is no such evidence.)"""
        last = self.layout.last(stage)
        if not last.exists():
            return self.layout.best(stage).exists()
        try:
            payload = ckpt.load_checkpoint(last, ("state",))
        except Exception:
            return True
        return bool(payload.get("finished"))

    # --- actions -------------------------------------------------------------------------------------
    def attempt(self, job: SimJob, ending: str, budget: int) -> str:
        """One run of the job's callable as StageJob.__call__ does it; the SLURM state that follows."""
        self.budget, self.ending, self.current = (budget if ending != "finish" else 99), ending, job
        os.environ["SLURM_JOB_ID"] = job.id  # what the stage runner records as its job
        try:
            rc = stage_runner.train_stage(job.stage, self.cfg, self.layout, restart_token=job.job.restart_token,
                                          on_upstream_change="restart", interrupted_status="pending")
        except Killed:
            return "PENDING"  # node failure: SLURM requeues the job, same arguments
        except Exception:  # a UserError the stage reported (lost work, missing upstream): the job fails
            return "FAILED"
        finally:
            self.current = None
        if rc == 0:
            return "COMPLETED"
        if rc == stage_runner.EXIT_INTERRUPTED:
            if ending == "usr2" and job.job.checkpoint() is None:
                return "FAILED"  # over slurm.max_requeues
            return "PENDING"  # requeued (USR2 through submitit, SIGTERM/scontrol requeue by SLURM)
        return "FAILED"

    def submit(self, mode: str) -> None:
        progress = self.progress.read()
        if mode == "fresh":
            pipeline.stop_in_flight(progress, self.progress, self.layout.job_dir(), wait_s=5.0)
            pipeline.delete_for_fresh(self.layout, self.progress)
            self.scheduler.generation += 1
            self.seen_epoch = {s: 0 for s in MODEL_STAGES}
            progress = self.progress.read()
        steps = make_plan(mode, self.layout, progress, data_ready=progress.stages["data"].status == "done",
                          cfg=self.cfg)
        if any(s.decide for s in steps):
            return  # the command stops and asks (tested elsewhere)
        for step in steps:
            if step.restart:
                self.restarted.add(step.stage)
        SlurmExecutor().execute(RunPlan("resume", (Unit(self.layout, tuple(steps)),)), self.command, self.cfg)

    # --- invariants ------------------------------------------------------------------------------------
    def check(self) -> None:
        record = self.progress.read()
        for stage in MODEL_STAGES:
            try:
                payload = ckpt.load_checkpoint(self.layout.last(stage), ("state",))
            except Exception:
                payload = None
            epoch = payload["state"]["epoch"] if payload else None
            if epoch is None and stage in self.restarted:
                self.seen_epoch[stage] = 0  # the user removed or destroyed the progress: counting starts again
            if epoch is not None:
                if epoch < self.seen_epoch[stage] and stage not in self.restarted:
                    self.violations.append(f"{stage} went back from epoch {self.seen_epoch[stage]} to {epoch}")
                if payload.get("generation", self.scheduler.generation) < self.scheduler.generation:
                    self.violations.append(f"{stage}: last.pth of the run before fresh survived into the new one")
                self.seen_epoch[stage] = epoch
            by_hand = (record.stages[stage].note or "").startswith("marked done by hand")
            if record.stages[stage].status == "done" and payload is not None and not payload.get("finished") \
                    and not by_hand:  # a user may declare a stage done; what matters is what runs next
                self.violations.append(f"{stage} recorded done at epoch {epoch} of {self.epochs[stage]}")
        for stage in STAGES:
            job_id = record.stages[stage].job_id
            if job_id and record.stages[stage].executor == "slurm" and job_id not in self.scheduler.jobs:
                self.violations.append(f"{stage}: the record names job {job_id}, which never existed")
        self.restarted.clear()


class OrchestratorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="orch-model-"))
        self.scheduler = Scheduler()
        SimExecutor.scheduler = self.scheduler
        self.run = RunModel(self.dir / "run", self.scheduler)
        self.scheduler.run = self.run

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(mode=st.sampled_from(("fresh", "resume", "skip")))
    def submit(self, mode: str) -> None:
        self.run.submit(mode)

    @precondition(lambda self: self.scheduler.startable())
    @rule(pick=st.integers(0, 7), ending=st.sampled_from(("finish", "usr2", "sigterm", "kill9")),
          budget=st.integers(0, 3))
    def run_a_job(self, pick: int, ending: str, budget: int) -> None:
        jobs = self.scheduler.startable()
        job = jobs[pick % len(jobs)]
        job.state = "RUNNING"
        job.state = self.run.attempt(job, ending, budget)
        self.scheduler.tick()

    @precondition(lambda self: self.scheduler.startable())
    @rule(pick=st.integers(0, 7))
    def start_and_leave_running(self, pick: int) -> None:
        jobs = self.scheduler.startable()
        job = jobs[pick % len(jobs)]
        job.state = "RUNNING"
        self.run.attempt(job, "sigterm", 1)  # it trains an epoch, and is still running
        job.state = "RUNNING"

    @precondition(lambda self: any(j.state in LIVE for j in self.scheduler.jobs.values()))
    @rule(pick=st.integers(0, 7))
    def scancel(self, pick: int) -> None:
        live = [j for j in self.scheduler.jobs.values() if j.state in LIVE]
        self.scheduler.scancel([live[pick % len(live)].id])

    @rule()
    def time_passes(self) -> None:
        self.scheduler.tick()

    @rule(state=st.sampled_from(STATES))
    def hand_edit_progress(self, state: str) -> None:
        (self.run.root / ".training_progress").parent.mkdir(parents=True, exist_ok=True)
        (self.run.root / ".training_progress").write_text(state + "\n")

    @rule(stage=st.sampled_from(MODEL_STAGES), what=st.sampled_from(("delete best", "corrupt last", "delete folder")))
    def damage_files(self, stage: str, what: str) -> None:
        layout = self.run.layout
        if what == "delete best" and layout.best(stage).exists():
            layout.best(stage).unlink()
        elif what == "corrupt last" and layout.last(stage).exists():
            layout.last(stage).write_bytes(b"\0" * 64)
            self.run.restarted.add(stage)  # the user destroyed the progress: going back is expected
        elif what == "delete folder":
            shutil.rmtree(layout.ckpt_dir(stage), ignore_errors=True)
            self.run.restarted.add(stage)

    @invariant()
    def nothing_violated(self) -> None:
        self.run.check()
        assert not self.run.violations, "\n".join(self.run.violations)


@pytest.fixture
def simulated_cluster(monkeypatch: pytest.MonkeyPatch):
    import submitit

    from mi_pipeline.orchestration import slurm_resources
    from mi_pipeline.stages import registry

    task = type("Task", (), {"metric_name": "score"})()
    monkeypatch.setattr(submitit, "AutoExecutor", SimExecutor)
    monkeypatch.setattr(jobs, "job_states", lambda ids: SimExecutor.scheduler.states(list(ids)))
    monkeypatch.setattr(slurm_executor.subprocess, "run",
                        lambda argv, **kw: SimExecutor.scheduler.scancel(argv[1:]) if argv[0] == "scancel" else None)
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    monkeypatch.setattr(jobs, "queued_jobs",  # each poll lets time pass, as in SimExecutor.states
                        lambda: {j for j, state in SimExecutor.scheduler.states(list(SimExecutor.scheduler.jobs)).items()
                                 if state in LIVE})
    monkeypatch.setattr(slurm_resources, "cluster_partitions", lambda: None)
    monkeypatch.setattr(stage_runner, "fit", lambda task, optim, ctx: SimExecutor.scheduler.run.fit(task, optim, ctx))
    monkeypatch.setattr(stage_runner, "setup_determinism", lambda *a, **k: None)
    monkeypatch.setattr(stage_runner.StopFlag, "install", lambda self, log: None)
    monkeypatch.setattr(registry, "make_task", lambda stage, cfg, run_dir: task)
    monkeypatch.setattr(stage_runner, "_run_data",
                        lambda cfg, layout, update, log, world: update(status="done", pid=None, error=None) or 0)
    monkeypatch.setenv("SLURM_JOB_ID", "0")  # set per attempt to the simulated job's id


def test_orchestrator_state_machine_simulation(simulated_cluster) -> None:
    """150 random sequences of 25 steps (more under the soak switches) against the simulated cluster."""
    machine = settings(max_examples=SEQUENCES, stateful_step_count=40 if SOAK else 25, deadline=None,
                       suppress_health_check=list(HealthCheck), derandomize=not SOAK)
    OrchestratorMachine.TestCase.settings = machine
    OrchestratorMachine.TestCase().runTest()
