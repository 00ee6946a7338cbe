"""The packed checkpoint format (engine/packing.py): same tensors back, few records, old files still resume."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mi_pipeline.config import OptimConfig, PerformanceConfig
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine import packing
from mi_pipeline.engine.runlog import StageLog
from mi_pipeline.engine.trainer import FitContext, Interrupted, TrainState, fit
from mi_pipeline.errors import CheckpointError
from tests.engine.toy_task import ConvToyTask
from tests.helpers import assert_same_weights, model_weights


def _same(a: Any, b: Any) -> bool:
    """Equal trees: tensors by dtype, shape, strides and bits; everything else by ==."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.stride() == b.stride() and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _storage_records(path: Path) -> int:
    with zipfile.ZipFile(path) as archive:
        return sum(1 for name in archive.namelist() if "/data/" in name)


def test_every_kind_of_tensor_comes_back_with_its_values_dtype_shape_and_strides(tmp_path: Path) -> None:
    conv = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    payload = {
        "model": {"conv": conv, "bias": torch.randn(4), "half": torch.randn(3).to(torch.bfloat16)},
        "optimizer": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(0)}},
                      "param_groups": [{"lr": 0.1, "params": [0]}]},
        "rng": {"bytes": torch.randint(0, 255, (17,), dtype=torch.uint8), "python": (3, tuple(range(5)), None)},
        "view": base[:, 1::2],  # neither contiguous nor dense: stored contiguous, same values
        "mask": torch.tensor([True, False, True]),
        "ids": torch.arange(5),
        "plain": {"epoch": 3, "losses": [0.5, 0.25], "name": "x"},
    }
    payload["tied"] = payload["model"]["bias"]  # one tensor under two names
    ckpt.save_checkpoint(tmp_path / "last.pth", payload)
    loaded = ckpt.load_checkpoint(tmp_path / "last.pth")
    assert loaded.pop("format_version") == ckpt.FORMAT_VERSION
    expected = {**payload, "view": payload["view"].contiguous()}
    assert _same(loaded, expected)
    assert loaded["model"]["conv"].is_contiguous(memory_format=torch.channels_last)
    # one storage record per dtype (float32, bfloat16, uint8, float64, bool, int64) plus the index
    assert _storage_records(tmp_path / "last.pth") == 7
    loaded["model"]["bias"].add_(1)  # loaded tensors own their memory: no aliasing into one buffer
    assert torch.equal(loaded["model"]["conv"], conv)


def test_the_record_is_a_snapshot_of_the_values_at_save_time() -> None:
    weight = torch.ones(3)
    record = ckpt.to_record({"model": {"w": weight}})
    weight.add_(1)
    assert torch.equal(packing.unpack(record)["model"]["w"], torch.ones(3))


def test_metadata_reads_a_packed_file_without_tensors(tmp_path: Path) -> None:
    ckpt.save_checkpoint(tmp_path / "best_model.pth", {"model": {"w": torch.ones(2)}, "metric": 0.5})
    meta = ckpt.read_metadata(tmp_path / "best_model.pth")
    assert meta["metric"] == 0.5 and isinstance(meta["model"]["w"], ckpt.TensorStub)
    assert packing.PACKED not in meta


def test_a_damaged_index_is_one_checkpoint_error_line(tmp_path: Path) -> None:
    record = ckpt.to_record({"model": {"w": torch.ones(2)}})
    record[packing.PACKED]["index"] = torch.tensor([5, 0, 1, 2, -1])  # buffer 5 does not exist
    ckpt.write_record(tmp_path / "last.pth", record)
    with pytest.raises(CheckpointError, match="tensor index is damaged"):
        ckpt.load_checkpoint(tmp_path / "last.pth")


def _fit(run_dir: Path, stop_after: int | None = None) -> TrainState:
    calls = iter(range(10**6))
    ctx = FitContext(ckpt_dir=run_dir / "checkpoints" / "toy", log=StageLog(run_dir / "logs" / "toy", "toy"), seed=7,
                     config_hash="toyhash", config={}, device=torch.device("cpu"),
                     performance=PerformanceConfig(),
                     stop_requested=lambda: stop_after is not None and next(calls) >= stop_after)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(ConvToyTask(), OptimConfig(epochs=3, batch_size=8, lr=1e-2), ctx)
    finally:
        torch.set_num_threads(threads)


def _rewrite_as_format_1(path: Path) -> None:
    """What the engine wrote before packing: ``torch.save`` of the payload, one record per tensor."""
    payload = ckpt.load_checkpoint(path, required=())
    payload.pop("format_version")
    torch.save({"format_version": 1, **payload}, path)


def test_a_format_1_last_pth_still_resumes_bit_exact(tmp_path: Path) -> None:
    _fit(tmp_path / "whole")
    with pytest.raises(Interrupted):
        _fit(tmp_path / "cut", stop_after=11)  # mid-epoch 2 of 3 (8 batches per epoch)
    last = tmp_path / "cut/checkpoints/toy/last.pth"
    _rewrite_as_format_1(last)
    assert _storage_records(last) > 10 and ckpt.read_metadata(last, required=())["format_version"] == 1
    _fit(tmp_path / "cut")
    for name in (ckpt.LAST, ckpt.BEST):
        assert_same_weights(model_weights(tmp_path / "cut/checkpoints/toy" / name),
                            model_weights(tmp_path / "whole/checkpoints/toy" / name))
    resumed = (tmp_path / "cut/logs/toy/train.log").read_text()
    assert "resuming from last.pth at epoch 2" in resumed


def test_packing_leaves_a_module_state_dict_loadable(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    ckpt.save_checkpoint(tmp_path / "best_model.pth", {"model": net.state_dict()})
    other = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    other.load_state_dict(ckpt.load_checkpoint(tmp_path / "best_model.pth")["model"])
    assert_same_weights(other.state_dict(), net.state_dict())
