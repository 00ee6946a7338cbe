"""The typed contents of ``.training_progress``: one stage's record, the whole record, the seed's states.

Pure data and its validation; reading and writing the file (locks, atomic renames, repairs) is
``progress.py``. A record that parses as JSON but holds the wrong types is corrupted, exactly like
one that does not parse: ``RecordError`` says which key is wrong, and the reader keeps the file
aside and rebuilds the record from the checkpoints.
"""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from mi_pipeline.graph import STAGES

RECORD_VERSION = 1
STATES = (
    "step0_not_started",
    "step1_data_prepared",
    "step2_motion_trained",
    "step3_registration_trained",
    "step4_segmentation_trained",
    "all_completed",
)
Status = Literal["not_started", "pending", "running", "done", "failed", "left_out"]  # left_out: no LGE data
STATUSES: tuple[str, ...] = get_args(Status)
Executor = Literal["local", "slurm"]


class RecordError(ValueError):
    """The record's JSON is well formed but its content is not a record (a wrong type, a wrong shape)."""


@dataclass
class StageRecord:
    status: Status = "not_started"
    epoch: int = 0
    epochs: int | None = None
    best_metric: float | None = None
    metric_name: str | None = None
    attempts: int = 0  # times a process started training this stage
    requeues: int = 0
    job_id: str | None = None
    executor: Executor | None = None
    pid: int | None = None
    host: str | None = None
    log: str | None = None
    started: str | None = None
    finished: str | None = None
    updated: str | None = None
    heartbeat: str | None = None  # the trainer's last sign of life (see lease.py); ISO time
    error: str | None = None
    note: str | None = None
    restart_token: str | None = None  # a planned restart not yet carried out (see stage_runner)

    @classmethod
    def from_dict(cls, raw: Any, where: str = "stage") -> StageRecord:
        """A record from its JSON form; ``RecordError`` naming the key when a value has the wrong type.

        Keys this version does not know are ignored (a record from the same version with extra
        notes); a newer *format* is refused before this, by its version number.
        """
        if not isinstance(raw, dict):
            raise RecordError(f"{where}: expected an object, found {type(raw).__name__}")
        values = {}
        for item in dataclasses.fields(cls):
            if item.name in raw:
                values[item.name] = _checked(raw[item.name], _HINTS[item.name], f"{where}.{item.name}")
        return cls(**values)


_HINTS = typing.get_type_hints(StageRecord)


def _checked(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it fits the annotation ``hint`` (ints stay ints: ``True`` is not an epoch)."""
    options = get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return value
        if typing.get_origin(option) is Literal and value in get_args(option):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
    raise RecordError(f"{where}: {value!r} is not a valid value")


@dataclass
class Progress:
    stages: dict[str, StageRecord] = field(default_factory=lambda: {s: StageRecord() for s in STAGES})
    notes: list[str] = field(default_factory=list)  # what reading had to repair; shown to the user
    executor: Executor | None = None  # what the run was last submitted with (``--executor auto`` follows it)

    @property
    def state(self) -> str:
        return state_from_done([s for s in STAGES if self.stages[s].status == "done"])

    def done(self, stage: str) -> bool:
        return self.stages[stage].status == "done"

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "state": self.state, "executor": self.executor,
                "stages": {s: dataclasses.asdict(self.stages[s]) for s in STAGES}}

    @classmethod
    def from_json(cls, detail: dict[str, Any]) -> Progress:
        """The record's JSON part, validated: ``RecordError`` on a wrong shape or type."""
        stages = detail.get("stages", {})
        if not isinstance(stages, dict):
            raise RecordError(f"stages: expected an object, found {type(stages).__name__}")
        progress = cls(executor=_checked(detail.get("executor"), Executor | None, "executor"))
        for stage in STAGES:
            if stage in stages:
                progress.stages[stage] = StageRecord.from_dict(stages[stage], f"stages.{stage}")
        return progress


def state_from_done(done: list[str]) -> str:
    """The seed's linear state: the last step N such that steps 1..N are all done."""
    count = 0
    for stage in STAGES:
        if stage not in done:
            break
        count += 1
    return "all_completed" if count == len(STAGES) else STATES[count]


def done_from_state(state: str) -> list[str]:
    """Stages a hand-written state declares done (step4 and all_completed both mean all four)."""
    count = min(STATES.index(state), len(STAGES))
    return list(STAGES[:count])


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
