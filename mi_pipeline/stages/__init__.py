"""The three trained stages behind the one ``TrainTask`` interface (see ``engine/task.py``).

Each module also exposes ``build_model(cfg)`` so other code (segmentation, predict, evaluate) can
rebuild a stage's network from the config alone and load its ``best_model.pth`` weights.
"""

from __future__ import annotations

from pathlib import Path

from mi_pipeline.config import Config
from mi_pipeline.engine.task import TrainTask
from mi_pipeline.stages.motion import MotionTask
from mi_pipeline.stages.registration import RegistrationTask
from mi_pipeline.stages.segmentation import SegmentationTask

TASKS: dict[str, type[TrainTask]] = {
    "motion": MotionTask,
    "registration": RegistrationTask,
    "segmentation": SegmentationTask,
}


def make_task(stage: str, cfg: Config, run_dir: Path) -> TrainTask:
    try:
        task_cls = TASKS[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r} (trained stages: {', '.join(TASKS)})") from None
    return task_cls(cfg, Path(run_dir))


__all__ = ["TASKS", "make_task", "MotionTask", "RegistrationTask", "SegmentationTask"]
