"""Two actors on one run directory, interleaved at random: each is a submitter and a trainer at once.

Real code under test: the stage lease (``lease.take`` / ``Heartbeat``'s ownership rule, ``holder_alive``
with real process liveness), the submit lock (``submission.submit_lock``: a real file lock per actor),
the progress record under its lock. Real processes stand for the actors (``sleep``), so "the holder
is gone" is a real dead pid; an actor that dies comes back as a new process.

Invariants, after every step:
- never two trainers of one stage: the record names at most one holder, and it is the one the model
  says took the lease (a second ``take`` while the holder lives is refused);
- no lost record update: every epoch a holder recorded is in the record;
- one submitter per run: the submit lock is held by at most one actor, and a second is refused with
  the first one's pid in the message.
``MI_PIPELINE_SOAK=1`` runs 1000 sequences of 40 steps instead of 60 of 25.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from mi_pipeline.errors import UserError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration import lease
from mi_pipeline.orchestration.progress import ProgressFile
from mi_pipeline.orchestration.submission import submit_lock

SOAK = os.environ.get("MI_PIPELINE_SOAK") == "1"
STAGES = ("data", "motion")
ACTORS = (0, 1)


class Actor:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(["sleep", "600"])
        self.submitting: contextlib.ExitStack | None = None

    @property
    def holder(self) -> lease.Holder:
        return lease.Holder(socket.gethostname(), self.proc.pid, None)

    def die(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if self.submitting is not None:  # a dead process's file locks go with it
            self.submitting.close()
            self.submitting = None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.die()


class TwoActors(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.layout = RunLayout(Path(self.tmp.name))
        self.progress = ProgressFile.for_run(self.layout)
        self.actors = [Actor() for _ in ACTORS]
        self.holder: dict[str, int | None] = {s: None for s in STAGES}  # the model: which pid holds each lease
        self.procs = {actor.proc.pid: actor.proc for actor in self.actors}
        self.epoch = {s: 0 for s in STAGES}
        self.submitter: int | None = None

    def teardown(self) -> None:
        for actor in self.actors:
            actor.stop()
        self.tmp.cleanup()

    def _alive(self, pid: int | None) -> bool:
        return pid is not None and self.procs[pid].poll() is None

    @rule(who=st.sampled_from(ACTORS), stage=st.sampled_from(STAGES))
    def start_training(self, who: int, stage: str) -> None:
        current, me = self.holder[stage], self.actors[who].proc.pid
        may = not self._alive(current) or current == me
        try:
            before = lease.take(self.progress, stage, self.actors[who].holder, "log")
        except UserError as exc:
            assert not may, f"actor {who} refused although {stage}'s holder is gone: {exc}"
            assert f"pid {current}" in str(exc), str(exc)
            return
        assert may, f"actor {who} (pid {me}) took {stage} while pid {current} still trains it"
        assert before.epoch == self.epoch[stage], "taking over keeps the record's epochs (resume reads them)"
        self.holder[stage] = me

    @rule(who=st.sampled_from(ACTORS), stage=st.sampled_from(STAGES))
    def finish_an_epoch(self, who: int, stage: str) -> None:
        """What the trainer's on_epoch does; only a holder that still owns the record writes."""
        if self.holder[stage] != self.actors[who].proc.pid or not self._alive(self.holder[stage]):
            return
        with self.progress.update() as record:
            entry = record.stages[stage]
            assert self.actors[who].holder.owns(entry)
            entry.epoch += 1
        self.epoch[stage] += 1

    @rule(who=st.sampled_from(ACTORS), stage=st.sampled_from(STAGES))
    def finish_training(self, who: int, stage: str) -> None:
        if self.holder[stage] != self.actors[who].proc.pid or not self._alive(self.holder[stage]):
            return
        self.progress.update_stage(stage, status="done", pid=None)
        self.holder[stage] = None

    @rule(who=st.sampled_from(ACTORS))
    def start_submitting(self, who: int) -> None:
        actor = self.actors[who]
        if actor.submitting is not None:
            return
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(submit_lock(self.layout))
        except UserError as exc:
            assert self.submitter is not None and self.submitter != who, f"refused with no other submitter: {exc}"
            return
        assert self.submitter is None, f"actor {who} took the submit lock while actor {self.submitter} holds it"
        actor.submitting, self.submitter = stack, who

    @rule(who=st.sampled_from(ACTORS))
    def stop_submitting(self, who: int) -> None:
        actor = self.actors[who]
        if actor.submitting is not None:
            actor.submitting.close()
            actor.submitting, self.submitter = None, None

    @rule(who=st.sampled_from(ACTORS))
    def kill_9(self, who: int) -> None:
        self.actors[who].die()
        if self.submitter == who:
            self.submitter = None
        self.actors[who] = Actor()  # the user starts it again: a new process
        self.procs[self.actors[who].proc.pid] = self.actors[who].proc

    @invariant()
    def one_trainer_per_stage_and_no_lost_update(self) -> None:
        records = self.progress.read().stages
        for stage in STAGES:
            entry = records[stage]
            assert entry.epoch == self.epoch[stage], f"{stage}: a recorded epoch was lost"
            holder = self.holder[stage]
            if holder is not None and entry.status == "running":
                assert entry.pid == holder, f"{stage}: the record names pid {entry.pid}, not its holder {holder}"
            live = [pid for pid in self.procs if self._alive(pid) and pid == entry.pid and entry.status == "running"]
            assert len(live) <= 1


TwoActors.TestCase.settings = settings(max_examples=1000 if SOAK else 60, stateful_step_count=40 if SOAK else 25,
                                       deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.slow
def test_two_actors_never_train_one_stage_twice_and_lose_no_update() -> None:
    TwoActors.TestCase().runTest()
