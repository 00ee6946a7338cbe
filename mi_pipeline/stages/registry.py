"""The one registry of trained stages: what each one trains, builds and loads.

Everything that needs a stage's behaviour -- the stage runner (``make_task``), inference and
evaluation (``load_best``), the benchmarks -- asks here, so adding or changing a stage touches one
table. The stage graph itself (names, dependencies, config sections) is ``graph.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mi_pipeline.config import Config, stage_hash
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.task import TrainTask
from mi_pipeline.errors import CheckpointError
from mi_pipeline.graph import MODEL_STAGES
from mi_pipeline.stages import common, motion, registration, segmentation


@dataclass(frozen=True)
class ModelStage:
    """A trained stage: its training task and the network its checkpoints hold."""

    name: str
    task: type[TrainTask]
    build_model: Callable[[Config], nn.Module]


REGISTRY: dict[str, ModelStage] = {
    "motion": ModelStage("motion", motion.MotionTask, motion.build_model),
    "registration": ModelStage("registration", registration.RegistrationTask, registration.build_model),
    "segmentation": ModelStage("segmentation", segmentation.SegmentationTask, segmentation.build_model),
}
assert tuple(REGISTRY) == MODEL_STAGES, "registry and stage graph disagree"


def stage(name: str) -> ModelStage:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r} (trained stages: {', '.join(REGISTRY)})") from None


def make_task(name: str, cfg: Config, run_dir: Path) -> TrainTask:
    return stage(name).task(cfg, Path(run_dir))


def best_path(ckpt_root: Path, name: str) -> Path:
    """``<ckpt_root>/<stage>/best_model.pth`` (``ckpt_root`` is a run's ``checkpoints`` folder)."""
    return Path(ckpt_root) / name / ckpt.BEST


def load_best(cfg: Config, ckpt_root: Path, name: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild ``name``'s network from ``cfg``, load its best weights (eval mode) and describe the file.

    A missing file is a CheckpointError that says which stage to train.
    """
    path = best_path(ckpt_root, name)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing, stage {name} is not trained "
                              f"(python -m mi_pipeline.train --stage {name} ...)")
    model, payload = common.load_frozen(stage(name).build_model(cfg), path, name, device)
    info = {"path": str(path), "fingerprint": ckpt.file_fingerprint(path), "epoch": payload.get("epoch"),
            "config_hash": payload.get("config_hash"),
            "config_hash_matches": payload.get("config_hash") == stage_hash(cfg, name)}
    return model, info


def inference_stages(cfg: Config) -> tuple[str, ...]:
    """The models ``predict`` runs on a cine: segmentation, and motion when it feeds motion features."""
    return ("motion", "segmentation") if cfg.segmentation.motion_features else ("segmentation",)
