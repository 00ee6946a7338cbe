"""TensorBoard across kill -9 and resume: one run per stage, each epoch once, the uninterrupted values."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.engine.test_trainer import EPOCHS, finish, last, start_toy
from tests.helpers import checkpoint_epoch, wait_for

pytest.importorskip("tensorboard", reason="TensorBoard events need the tensorboard package (a dependency)")


def scalars(run_dir: Path) -> tuple[int, dict[str, list[tuple[int, float]]]]:
    """(event files in the stage's TensorBoard run, tag -> [(step, value)] as TensorBoard reads them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_dir / "logs" / "toy" / "tensorboard"
    files = len(list(folder.glob("events.out.tfevents.*")))
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return files, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def uninterrupted_events(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("tb_uninterrupted")
    finish(start_toy(run_dir))
    return scalars(run_dir)


def test_kill9_mid_epoch_then_resume_continues_the_same_run(tmp_path: Path, uninterrupted_events) -> None:
    proc = start_toy(tmp_path, sleep_s=0.03)
    wait_for(lambda: checkpoint_epoch(last(tmp_path)) >= 2, 120, "epoch 2 checkpoint", proc)
    time.sleep(0.2)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint_epoch(last(tmp_path)) < EPOCHS, "killed too late to test a resume"
    finish(start_toy(tmp_path))
    files, got = scalars(tmp_path)
    ref_files, want = uninterrupted_events
    assert files == ref_files == 1, "one run per stage, not one per attempt"
    assert set(got) == set(want) and {"train_loss", "lr", "seconds"} <= set(got)
    for tag, points in got.items():
        steps = [s for s, _ in points]
        assert steps == list(range(1, EPOCHS + 1)), f"{tag}: steps {steps}"
        if tag != "seconds":  # wall time differs between runs; every other value is bit-exact on CPU
            assert points == want[tag], tag
