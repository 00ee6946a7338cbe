"""A tiny, cardiology-free TrainTask for engine tests (the engine must not need anything more)."""

from __future__ import annotations

import time

import torch
from torch import nn

from mi_pipeline.engine.task import Batch, TrainTask


class ToyTask(TrainTask):
    """Regression with dropout and noisy augmentation, so every RNG path is exercised."""

    name = "toy"
    metric_name = "neg_mse"

    def __init__(self, samples: int = 64, sleep_s: float = 0.0) -> None:
        self.samples = samples
        self.sleep_s = sleep_s

    def setup(self, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(1234)
        self.x = torch.randn(self.samples, 8, generator=generator)
        self.y = self.x @ torch.randn(8, 1, generator=generator) + 0.1

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))

    def num_train_samples(self) -> int:
        return self.samples

    def make_batch(self, indices: list[int], generator: torch.Generator, device: torch.device) -> Batch:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        x = self.x[indices]
        return {"x": x + 0.01 * torch.randn(x.shape, generator=generator), "y": self.y[indices]}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
        return loss, {"mse": loss.item()}

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"neg_mse": -nn.functional.mse_loss(model(self.x), self.y).item()}
