"""One split's slices, read from the cache on demand: what a stage trains on without the cohort in RAM.

A stage used to stack every subject of its split into one tensor at setup, so memory grew with the
cohort. ``SplitSlices`` scans the split once (checking each subject, remembering how many slices it
has), then builds each batch from the few subjects it touches through the cache's bounded
``SubjectStore``. Batches are the same arrays in the same order as the stacked tensors gave, so
training results do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from mi_pipeline.data.cache import Subject, SubjectStore, read_split
from mi_pipeline.errors import InputError


class SplitSlices:
    """Slices of split ``name``, indexed 0..len-1 in subject order, then slice order (like ``stack_slices``)."""

    def __init__(self, store: SubjectStore, name: str, check: Callable[[Subject], None], *, where: str) -> None:
        self.store = store
        self.ids = read_split(store.run_dir, name)
        if not self.ids:
            raise InputError(f"{where}: the split is empty (no subjects)")
        counts, es, spacing, self.fields = [], [], [], {"cine_label": True, "lge": True, "lge_label": True}
        for subject in self.subjects():
            check(subject)
            counts.append(subject.cine.shape[0])
            es.append(subject.es)
            spacing.append(float(subject.spacing[0]))
            for field in self.fields:
                self.fields[field] &= getattr(subject, field) is not None
        self.counts = np.asarray(counts, dtype=np.int64)
        self.owner = np.repeat(np.arange(len(counts)), counts)  # subject index of every slice
        self.z = np.concatenate([np.arange(c) for c in counts])  # its slice within the subject
        self.es = torch.from_numpy(np.repeat(np.asarray(es, dtype=np.int64), counts))  # ES frame of every slice
        # in-plane pixel size of every slice (mm): crops are sized per heart, so subjects differ
        self.spacing = np.repeat(np.asarray(spacing, dtype=np.float64), counts)
        self.where = where

    def __len__(self) -> int:
        return int(self.owner.size)

    def subjects(self) -> Iterator[Subject]:
        """The split's subjects in order, read one after the other through the store."""
        return self.store.each(self.ids)

    def has(self, field: str) -> bool:
        """Every subject of the split has ``field`` (e.g. ``cine_label``)."""
        return self.fields[field]

    def rows(self, field: str, indices: list[int] | torch.Tensor) -> torch.Tensor:
        """``field`` of the given slices, stacked in that order: (len(indices), ...)."""
        idx = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        out = []
        for i in idx:
            subject = self.store.get(self.ids[self.owner[i]])
            value = getattr(subject, field)
            if value is None:
                raise InputError(f"cached subject {subject.id}: no {field} in the cache, needed by {self.where}")
            out.append(value[self.z[i]])
        return torch.from_numpy(np.stack(out))
