"""Background checkpoint writes: same files, nothing claimed before it is on disk, errors still one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mi_pipeline.config import OptimConfig, PerformanceConfig
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.checkpoint_writer import MAX_PENDING, CheckpointWriter
from mi_pipeline.engine.runlog import StageLog
from mi_pipeline.engine.trainer import FitContext, TrainState, fit
from mi_pipeline.errors import CheckpointError
from mi_pipeline.fsio import SLOW_WRITE_ENV
from tests.engine.toy_task import ToyTask
from tests.helpers import assert_same_weights, checkpoint_epoch, model_weights


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write sleeps 0.3 s inside (the test-only hook), so writes are still in flight."""
    monkeypatch.setenv(SLOW_WRITE_ENV, "0.3")


def test_file_holds_the_values_at_save_time_not_later_ones(tmp_path: Path, slow_disk: None) -> None:
    model = nn.Linear(4, 3)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    writer = CheckpointWriter()
    writer.save(tmp_path / "last.pth", {"model": model.state_dict()})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the next optimizer step, while the file is being written
    writer.close()
    assert_same_weights(model_weights(tmp_path / "last.pth"), expected)


def test_callbacks_run_in_order_only_once_their_file_is_on_disk(tmp_path: Path, slow_disk: None) -> None:
    seen: list[tuple[str, bool]] = []
    writer = CheckpointWriter()
    for name in ("best_model.pth", "last.pth", "again.pth"):
        target = tmp_path / name
        writer.save(target, {"model": {"w": torch.ones(2)}},
                    then=lambda t=target: seen.append((t.name, t.is_file())))
    # a third save waited for the first: at most MAX_PENDING snapshots are held
    assert len(seen) >= 3 - MAX_PENDING
    writer.flush()
    assert seen == [("best_model.pth", True), ("last.pth", True), ("again.pth", True)]
    writer.close()


def test_failed_background_write_is_one_line_and_its_callback_never_runs(tmp_path: Path) -> None:
    (tmp_path / "ck").write_text("a file where the checkpoint folder should be")
    ran: list[bool] = []
    writer = CheckpointWriter()
    writer.save(tmp_path / "ck" / "last.pth", {"model": {"w": torch.ones(2)}}, then=lambda: ran.append(True))
    with pytest.raises(CheckpointError) as info:
        writer.flush()
    writer.close()
    message = str(info.value)
    assert "ck/last.pth" in message and "could not write checkpoint" in message and "\n" not in message
    assert not ran


@pytest.mark.parametrize("background", [True, False], ids=["background", "foreground"])
def test_a_failed_best_write_stops_that_epochs_last_write(tmp_path: Path, background: bool) -> None:
    """last.pth says "epoch N done, N was best": it must never land when best_model.pth for N did not."""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "last.pth").write_bytes(b"epoch N-1")
    (tmp_path / "best_model.pth").mkdir()  # the best write fails (a folder where the file should go)
    (tmp_path / "best_model.pth" / "x").write_text("keeps the folder from being replaced")
    ran: list[str] = []
    writer = CheckpointWriter(background=background)
    with pytest.raises(CheckpointError):
        writer.save_all([(tmp_path / "best_model.pth", {"model": {"w": torch.ones(2)}}, lambda: ran.append("best")),
                         (tmp_path / "old" / "last.pth", {"model": {"w": torch.ones(2)}}, lambda: ran.append("last"))])
        writer.flush()
    writer.close()
    assert (tmp_path / "old" / "last.pth").read_bytes() == b"epoch N-1", "last.pth of the failed epoch was written"
    assert ran == []


def test_foreground_writer_has_written_when_save_returns(tmp_path: Path) -> None:
    ran: list[bool] = []
    writer = CheckpointWriter(background=False)
    writer.save(tmp_path / "last.pth", {"model": {"w": torch.ones(2)}}, then=lambda: ran.append(True))
    assert (tmp_path / "last.pth").is_file() and ran == [True]
    writer.close()


def _fit(run_dir: Path, background: bool, on_epoch=lambda state, metrics: None) -> TrainState:
    ctx = FitContext(ckpt_dir=run_dir / "checkpoints" / "toy", log=StageLog(run_dir / "logs" / "toy", "toy"), seed=7,
                     config_hash="toyhash", config={}, device=torch.device("cpu"),
                     performance=PerformanceConfig(async_checkpoint=background), on_epoch=on_epoch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both runs alike; the worker's setting is restored for later tests
    try:
        return fit(ToyTask(), OptimConfig(epochs=4, batch_size=8, lr=1e-2), ctx)
    finally:
        torch.set_num_threads(threads)


def test_engine_reports_an_epoch_only_after_its_last_pth_and_writes_the_same_files(tmp_path: Path,
                                                                                  slow_disk: None) -> None:
    reported: list[tuple[int, int]] = []

    def on_epoch(state: TrainState, metrics: dict[str, float]) -> None:  # what updates the progress record
        reported.append((state.epoch, checkpoint_epoch(tmp_path / "bg" / "checkpoints/toy/last.pth")))

    _fit(tmp_path / "bg", background=True, on_epoch=on_epoch)
    assert reported == [(1, 1), (2, 2), (3, 3), (4, 4)]
    _fit(tmp_path / "fg", background=False)
    for name in (ckpt.LAST, ckpt.BEST):
        assert_same_weights(model_weights(tmp_path / "bg/checkpoints/toy" / name),
                            model_weights(tmp_path / "fg/checkpoints/toy" / name))
    bg_log = (tmp_path / "bg/logs/toy/train.log").read_text()
    assert all(f"epoch {k}/4" in bg_log for k in range(1, 5))
    assert not list((tmp_path / "bg/checkpoints/toy").glob("*.tmp"))
