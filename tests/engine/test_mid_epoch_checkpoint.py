"""The mid-epoch last.pth's cadence (performance.checkpoint_every_s / checkpoint_every_steps).

Its kill -9 behaviour (a real SIGKILL mid-epoch, bit-exact resume, steps redone <= the interval) is
tested in tests/faults/test_kill9.py.
"""

from __future__ import annotations

import time

from mi_pipeline.config import PerformanceConfig, load_config, stage_hash
from mi_pipeline.engine import trainer
from mi_pipeline.engine.checkpoint_writer import CheckpointWriter
from mi_pipeline.engine.trainer import TrainState


def test_mid_epoch_interval_stretches_to_one_percent_of_a_save() -> None:
    """``checkpoint_every_s`` is a floor: a save that cost 2 s moves the next one to >= 200 s away."""
    writer = CheckpointWriter(background=False)
    saver = trainer._Saver(None, writer, None, None, None, None, {}, 1,  # type: ignore[arg-type]
                           PerformanceConfig(checkpoint_every_s=10.0))
    state = TrainState(step=7)
    saver.saved_at = time.monotonic() - 11
    assert saver.mid_epoch_due(state)
    writer.last_cost_s = 2.0
    assert not saver.mid_epoch_due(state)
    saver.saved_at = time.monotonic() - 201
    assert saver.mid_epoch_due(state)
    off = trainer._Saver(None, writer, None, None, None, None, {}, 1,  # type: ignore[arg-type]
                         PerformanceConfig(checkpoint_every_s=0, checkpoint_every_steps=5))
    assert not off.mid_epoch_due(TrainState(step=7)) and off.mid_epoch_due(TrainState(step=10))


def test_the_cadence_is_not_part_of_any_stage_hash() -> None:
    """How often last.pth is written changes nothing a model depends on: resuming under another cadence continues."""
    base = load_config(None)
    other = load_config(None, ["performance.checkpoint_every_s=5", "performance.checkpoint_every_steps=7"])
    assert other.performance.checkpoint_every_steps == 7
    for stage in ("data", "motion", "registration", "segmentation"):
        assert stage_hash(other, stage) == stage_hash(base, stage), stage
