"""Rows of a large derived array kept on disk instead of in memory.

Why: the segmentation stage computes its whole training input once (cine frames + motion fields,
registered targets); held in memory, that grows with the cohort (and is ~3x the cine itself). Here
it lives in an unlinked temporary file beside the run (so a kill -9 leaves nothing behind to clean),
and a batch reads only its own rows with ``pread``: the process's memory holds those rows, not the
file (the OS page cache may keep the file warm, but that is reclaimable and not the process's).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch


class DiskRows:
    """An (n, *row_shape) array of one dtype in a temporary file; ``x[i]``, ``x[a:b]``, ``x[[i, j]]`` read rows."""

    def __init__(self, n: int, row_shape: tuple[int, ...], dtype: np.dtype | type, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(d) for d in row_shape)
        self.n = int(n)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._file = tempfile.TemporaryFile(dir=directory, prefix=".rows-")
        self._file.truncate(self.n * self.row_bytes)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.row_shape)

    def __len__(self) -> int:
        return self.n

    def write(self, start: int, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape or start < 0 or start + rows.shape[0] > self.n:
            raise ValueError(f"rows {rows.shape} at {start} do not fit {self.shape}")
        os.pwrite(self._file.fileno(), rows.tobytes(), start * self.row_bytes)

    def read(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """Rows ``indices`` in that order (consecutive runs read in one call)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((idx.size, *self.row_shape), dtype=self.dtype)
        flat = out.reshape(idx.size, -1).view(np.uint8)
        i = 0
        while i < idx.size:
            j = i + 1
            while j < idx.size and idx[j] == idx[j - 1] + 1:
                j += 1
            if idx[i] < 0 or idx[j - 1] >= self.n:
                raise IndexError(f"row {int(idx[i])} of {self.n}")
            data = os.pread(self._file.fileno(), (j - i) * self.row_bytes, int(idx[i]) * self.row_bytes)
            flat[i:j] = np.frombuffer(data, dtype=np.uint8).reshape(j - i, -1)
            i = j
        return out

    def __getitem__(self, key: int | slice | list[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(key, slice):
            key = range(*key.indices(self.n))
        if isinstance(key, torch.Tensor):
            key = key.tolist()
        if isinstance(key, int):
            return torch.from_numpy(self.read([key])[0])
        return torch.from_numpy(self.read(list(key)))

    def close(self) -> None:
        self._file.close()
