"""Host reads of tensor values, counted (what would make a GPU's queue drain, once per read).

On a GPU, ``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``, ``.cpu()`` and ``.numpy()`` wait until
every queued kernel has run. The race runs on CPU, where these are the same Python calls, so counting
them per step says how often each tool would stall a GPU. Not counted: reads from ``torch/optim``
(AdamW reads its per-parameter ``step`` counters, which stay on the host unless ``capturable``).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
_HOST_COUNTERS = ("/torch/optim/",)


class SyncCounter:
    """``count``: reads so far, once ``install``-ed (process-wide, for the rest of the process)."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> SyncCounter:
        for name in READS:
            setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name)))
        return self

    def _wrap(self, original: Any) -> Any:
        def wrapped(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_code.co_filename
            if not any(part in caller for part in _HOST_COUNTERS):
                self.count += 1
            return original(tensor, *args, **kwargs)

        return wrapped
