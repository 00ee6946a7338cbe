"""Our TensorBoard event writer against TensorBoard's own protobufs and reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from mi_pipeline.engine import events
from mi_pipeline.engine.tracking import TensorBoardRun

pytest.importorskip("tensorboard", reason="checked against the tensorboard package (a dependency)")


def test_crc32c_matches_the_standard_check_value() -> None:
    assert events.crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert events.crc32c(b"") == 0


@pytest.mark.parametrize(("tag", "value", "step"), [("train_loss", 0.125, 3), ("val/dice", -1.5e-7, 0),
                                                     ("lr", 3e-4, 2**40), ("ünïcode", 7.0, 1)])
def test_scalar_event_bytes_equal_tensorboards_protobuf(tag: str, value: float, step: int) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2

    want = event_pb2.Event(wall_time=1234.5, step=step, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])).SerializeToString()
    assert events.scalar_event(tag, value, step, 1234.5) == want
    assert events.version_event(9.0) == event_pb2.Event(wall_time=9.0, file_version="brain.Event:2").SerializeToString()


def test_tensorboard_reads_the_file_with_its_checksums(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = TensorBoardRun(tmp_path / "tb")
    run.restart_from([{"epoch": 1, "train_loss": 0.5, "lr": 1e-3, "best": True},
                      {"epoch": 2, "train_loss": 0.25, "lr": 1e-3, "huge": 1e300, "nan": float("nan")}])
    run.close()
    (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(path.parent))
    acc.Reload()
    got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert got == {"train_loss": [(1, 0.5), (2, 0.25)], "lr": [(1, pytest.approx(1e-3)), (2, pytest.approx(1e-3))],
                   "huge": [(2, float("inf"))]}


def test_a_corrupted_record_is_refused_by_tensorboard(tmp_path: Path) -> None:
    """The checksums are real: TensorBoard's reader rejects a flipped payload byte."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

    file = events.EventFile(tmp_path)
    file.add_scalars({"loss": 1.0}, step=1)
    file.close()
    data = bytearray(file.path.read_bytes())
    data[-6] ^= 0xFF  # inside the last record's payload
    file.path.write_bytes(bytes(data))
    assert len(list(RawEventFileLoader(str(file.path)).Load())) == 1  # the version record only


def test_an_unwritable_folder_stops_the_events_not_the_training(tmp_path: Path) -> None:
    (tmp_path / "tb").write_text("a file where the folder should be")
    run = TensorBoardRun(tmp_path / "tb")
    run.add({"epoch": 1, "loss": 1.0})
    assert run.unavailable and "epoch 1" in run.unavailable
    run.add({"epoch": 2, "loss": 1.0})  # no second error
    run.close()


def test_writing_events_imports_no_tensorboard(tmp_path: Path) -> None:
    """The point of our own writer: a stage (re)start and its epoch commits do not pay TensorBoard's import."""
    import subprocess
    import sys

    from tests.helpers import env

    code = ("import sys\nfrom pathlib import Path\nfrom mi_pipeline.engine.tracking import TensorBoardRun\n"
            f"run = TensorBoardRun(Path({str(tmp_path)!r}))\n"
            "run.restart_from([{'epoch': 1, 'loss': 0.5}])\nrun.add({'epoch': 2, 'loss': 0.25})\nrun.close()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'google') "
            "or m.startswith('torch.utils.tensorboard')))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
