"""Reading the cache lazily: the subject store keeps to its budget, disk rows and split slices give
exactly the arrays the stacked tensors gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mi_pipeline.data import cache
from mi_pipeline.data.rows import DiskRows
from mi_pipeline.stages.lazy import SplitSlices


def _write(run: Path, n: int, z: int = 2, size: int = 64) -> list[str]:
    rng = np.random.default_rng(0)
    ids = [f"s{i:02d}" for i in range(n)]
    for i, sid in enumerate(ids):
        cine = rng.random((z + i % 2, 4, size, size), dtype=np.float32)  # 1 or 2 extra slices: uneven subjects
        cache.save_subject(run, cache.Subject(id=sid, cine=cine, es=1, spacing=(1.0, 1.0, 8.0), affine=np.eye(4)))
    cache.write_splits(run, {"train": ids, "val": [], "test": []})
    return ids


def test_store_keeps_to_its_budget(tmp_path: Path) -> None:
    ids = _write(tmp_path, 10)  # ~130-200 kB per subject
    store = cache.SubjectStore(tmp_path, budget_mb=1)
    for sid in ids + ids[::-1]:
        subject = store.get(sid)
        assert subject.id == sid
        assert store._bytes <= 2**20
    assert 0 < len(store._held) < len(ids)
    assert np.array_equal(store.get(ids[3]).cine, cache.load_subject(tmp_path, ids[3]).cine)


def test_split_slices_match_the_stacked_split(tmp_path: Path) -> None:
    _write(tmp_path, 6)
    seen: list[str] = []
    slices = SplitSlices(cache.SubjectStore(tmp_path, 1), "train", lambda s: seen.append(s.id), where="test")
    stacked = torch.from_numpy(np.concatenate([s.cine for s in cache.load_split(tmp_path, "train")]))
    assert len(slices) == stacked.shape[0] and len(seen) == 6
    order = [7, 0, 3, 3, len(slices) - 1]
    assert torch.equal(slices.rows("cine", order), stacked[order])
    assert not slices.has("lge")


def test_disk_rows_read_back_what_was_written(tmp_path: Path) -> None:
    data = np.arange(7 * 3 * 5, dtype=np.float32).reshape(7, 3, 5)
    rows = DiskRows(7, (3, 5), np.float32, tmp_path)
    rows.write(0, data[:4])
    rows.write(4, data[4:])
    assert rows.shape == (7, 3, 5)
    assert torch.equal(rows[[6, 1, 2, 3, 0]], torch.from_numpy(data[[6, 1, 2, 3, 0]]))
    assert torch.equal(rows[2:5], torch.from_numpy(data[2:5])) and torch.equal(rows[4], torch.from_numpy(data[4]))
    assert list(tmp_path.iterdir()) == []  # unlinked: a killed process leaves nothing behind
