"""Host synchronisations per training step, counted: the loop must not make a GPU wait every step.

On a GPU, reading a tensor's value on the host (``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``,
``.cpu()``, ``.numpy()``) waits until every queued kernel has run. These tests count such calls on CPU,
where they are the same Python calls, by wrapping the Tensor methods for the length of a real ``fit``.
A task whose loss and validation read nothing themselves isolates what the engine does.

Only reads made by the package's own code (and the toy task's) are counted: torch's AdamW reads its
per-parameter ``step`` counters with ``.item()``, but those tensors live on the host even in a GPU
run (unless ``capturable``), so reading them never waits for the device.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mi_pipeline.config import OptimConfig, PerformanceConfig
from mi_pipeline.engine import trainer
from mi_pipeline.engine.runlog import BatchProgress, StageLog
from mi_pipeline.engine.trainer import FitContext, LossReader, fit
from tests.engine.toy_task import ToyTask

OURS = (str(Path(trainer.__file__).resolve().parents[1]), str(Path(__file__).resolve().parent))
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
EPOCHS = 2


class SilentToy(ToyTask):
    """The toy task without reads of its own: no loss parts, validation returns a tensor the
    engine turns into a float (one read per epoch, counted)."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return nn.functional.mse_loss(model(batch["x"]), batch["y"]), {}

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"neg_mse": -nn.functional.mse_loss(model(self.x), self.y)}  # type: ignore[dict-item]


def count_reads(monkeypatch: pytest.MonkeyPatch, run_dir: Path, samples: int,
                perf: PerformanceConfig | None = None) -> int:
    """Host reads of tensor values during one whole ``fit`` (training steps, validation, checkpoints)."""
    calls = {"n": 0}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            if sys._getframe(1).f_code.co_filename.startswith(OURS):
                calls["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    ctx = FitContext(ckpt_dir=run_dir / "ckpt", log=StageLog(run_dir / "logs", "toy"), seed=7, config_hash="h",
                     config={}, device=torch.device("cpu"),
                     performance=perf or PerformanceConfig(async_checkpoint=False, checkpoint_every_s=0))
    try:
        fit(SilentToy(samples=samples), OptimConfig(epochs=EPOCHS, batch_size=8, lr=1e-2), ctx)
    finally:
        monkeypatch.undo()
    return calls["n"]


def test_no_host_sync_per_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """4x the steps, the same number of reads: the steps themselves read nothing (the losses are read
    once per epoch here, fewer than SYNC_EVERY steps each, plus validation and the checkpoints' RNG)."""
    few = count_reads(monkeypatch, tmp_path / "few", samples=64)  # 8 steps per epoch
    many = count_reads(monkeypatch, tmp_path / "many", samples=256)  # 32 steps per epoch
    assert many == few, f"{few} reads for 16 steps, {many} for 64: the step loop reads the device per step"


def test_losses_are_read_every_sync_every_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With SYNC_EVERY = 4, 32 steps per epoch read 8 times per epoch: one read per SYNC_EVERY steps."""
    base = count_reads(monkeypatch, tmp_path / "base", samples=256)
    monkeypatch.setattr(trainer, "SYNC_EVERY", 4)
    batched = count_reads(monkeypatch, tmp_path / "batched", samples=256)
    assert batched - base == EPOCHS * (32 // 4 - 1), (base, batched)


def test_non_finite_loss_fails_with_its_batch_index() -> None:
    """The finite check happens at the read, and names the first bad batch (1-based, as before)."""
    reader = LossReader([], every=4)
    for index, value in enumerate([1.0, 2.0, float("nan")]):
        reader.add(index, torch.tensor(value))
    assert reader.values == [], "nothing is read before SYNC_EVERY losses are pending"
    with pytest.raises(FloatingPointError, match="loss is nan at batch 3"):
        reader.add(3, torch.tensor(3.0))
    assert reader.values == [1.0, 2.0]


def test_a_progress_line_before_the_first_read_shows_no_loss_rather_than_nan() -> None:
    """Losses are read in batches, so early progress lines have none yet: they say nothing, not 'loss nan'."""
    lines: list[str] = []
    bar = BatchProgress(LogLines(lines), total=10, initial=0, desc="[toy] epoch 1/1", every_s=0.0)
    reader = LossReader([], every=4)
    reader.add(0, torch.tensor(0.5))
    bar.update(reader.last())
    reader.read()
    bar.update(reader.last())
    assert lines == ["[toy] epoch 1/1 batch 1/10", "[toy] epoch 1/1 batch 2/10 loss 0.5000"]


class LogLines:
    """The one thing a progress bar needs of a stage log: ``info``."""

    def __init__(self, lines: list[str]) -> None:
        self.info = lines.append
