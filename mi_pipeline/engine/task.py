"""The one interface between the training engine and a stage.

The engine owns the loop, checkpoints, RNG, schedules, logging and signals; a task owns the
model, its data and its losses. The engine never looks inside a batch, and a task never saves
files or touches RNG state other than through the generator it is handed.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class TrainTask(abc.ABC):
    """What one trainable stage provides to the engine.

    Determinism contract (what makes resume bit-exact): ``make_batch`` must be a pure function of
    its ``indices`` and the ``generator`` it is given (the engine seeds it from seed, epoch and
    batch number), and ``setup``/``validate`` must not depend on global RNG state.
    """

    name: ClassVar[str]
    metric_name: ClassVar[str]  # the validation metric that decides best_model.pth
    higher_is_better: ClassVar[bool] = True

    @abc.abstractmethod
    def setup(self, device: torch.device) -> None:
        """Load data (from the preprocessed cache) and any frozen upstream models."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (the engine seeds the RNG before calling)."""

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; override to give parts of the model their own LR."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]

    @abc.abstractmethod
    def num_train_samples(self) -> int:
        """Number of training samples; an epoch visits each once in a seeded random order."""

    @abc.abstractmethod
    def make_batch(self, indices: list[int], generator: torch.Generator, device: torch.device) -> Batch:
        """Collate (and augment, using only ``generator``) the samples at ``indices``."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar training loss and any named parts of it worth logging, as detached tensors on the
        device (reading them to the host here would stall a GPU every step; the loop reads in batches)."""

    def notes(self) -> list[str]:
        """Lines worth a place in the stage log once ``setup`` has run (e.g. how the targets were made)."""
        return []

    def model_facts(self) -> dict[str, Any]:
        """Plain facts about what the model learnt that whoever loads it must know (saved in
        ``best_model.pth`` as ``facts``, e.g. which outputs were never trained); asked after ``setup``."""
        return {}

    def baseline_warning(self, metrics: dict[str, float]) -> str | None:
        """A loud line when this epoch's model does not beat the stage's trivial baseline, else None."""
        return None

    @abc.abstractmethod
    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Metrics on the validation subjects; must contain ``metric_name``."""
