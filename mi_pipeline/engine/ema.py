"""An exponential moving average of the weights being trained (``optim.ema_decay``).

Why: a stage whose validation is a handful of subjects chooses ``best_model.pth`` on a noisy curve, and
the weights of any one epoch carry the noise of its last steps. The average over the last ~1/(1 - decay)
steps moves less from epoch to epoch; validation and ``best_model.pth`` use it, training does not (the
optimizer keeps stepping the raw weights).

Exactness: the average is a pure function of the raw weights after each step and the step count, so
it is saved in ``last.pth`` beside them and a resumed run continues it bit for bit. Under data parallel
every rank updates its own copy from the same synced weights, so every rank holds the same average.

Buffers: floating-point buffers (BatchNorm's running statistics) are averaged like the weights, which
keeps them consistent with averaged weights only approximately; other buffers (counters) are copied.
The stages' networks normalise by instance (no running statistics), so they have no buffers at all.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

# early steps use min(decay, (1 + step) / (WARMUP + step)): the average forgets the random start, remembering
# about the last ninth of the steps so far. So a decay d only takes over after (WARMUP*d - 1) / (1 - d) steps:
# ~890 for 0.99, ~1790 for 0.995; before that every decay gives the same average (measured: segmentation's
# epoch-10 average was bit-identical with 0.99, 0.995 and 0.998, README "Weight average")
WARMUP = 10


class WeightAverage:
    """The averaged copy of ``model``, bound to the model's own tensors (updated in place after each step)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        source, average = model.state_dict(keep_vars=True), self.module.state_dict(keep_vars=True)
        pairs = [(average[name].data, tensor.data) for name, tensor in source.items()]
        self._floats = ([a for a, c in pairs if a.is_floating_point()], [c for a, c in pairs if a.is_floating_point()])
        self._others = [(a, c) for a, c in pairs if not a.is_floating_point()]

    def rate(self, step: int) -> float:
        """The decay used at optimizer step ``step`` (1-based): short memory at the start, ``decay`` later."""
        return min(self.decay, (1.0 + step) / (WARMUP + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the model's current weights: avg <- d * avg + (1 - d) * weights."""
        averages, currents = self._floats
        if averages:  # one fused call for all tensors: a GPU launches a few kernels per step, not one per tensor
            torch._foreach_lerp_(averages, currents, 1.0 - self.rate(step))
        for average, current in self._others:
            average.copy_(current)

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average from the model's current weights (a checkpoint saved without one)."""
        for average, current in [*zip(*self._floats), *self._others]:
            average.copy_(current)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, as ``last.pth`` (loaded with ``weights_only=True``) may hold."""
        return self.module.state_dict()

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.module.load_state_dict(saved)
