"""Run configuration: YAML -> frozen dataclasses, validated once at the edge.

By concern: ``schema.py`` (the dataclasses, their defaults and bounds), ``loading.py`` (YAML and
``--set`` -> ``Config`` with one-line errors; ``Config`` -> dict and YAML), ``fingerprints.py``
(``stage_hash``: what a stage's result depends on; the changes a plan shows), ``compat.py`` (what
older configs and checkpoints wrote). Import from here: the names below are the package's interface.
"""

from __future__ import annotations

from mi_pipeline.config.compat import AMP_FROM_BOOL, HASHED_WHEN_CHANGED
from mi_pipeline.config.fingerprints import NOT_HASHED, config_changes, only_longer_training, stage_hash
from mi_pipeline.config.loading import dump_yaml, from_dict, load_config, to_dict
from mi_pipeline.config.schema import (
    AMP_MODES,
    CINE_ONLY_FORMATS,
    CONTAINER_BIND_OPTIONS,
    FORBIDDEN_CONTAINER_ARGS,
    MAX_BATCH,
    MAX_CONFIG_BYTES,
    MAX_EPOCHS,
    MAX_FOLDS,
    MAX_THREADS,
    AmpMode,
    Config,
    ContainerConfig,
    CvConfig,
    DataConfig,
    MotionConfig,
    OptimConfig,
    PerformanceConfig,
    PhantomConfig,
    RegistrationConfig,
    SegmentationConfig,
    SlurmConfig,
    SlurmResources,
    resolve_performance,
)

__all__ = [
    "AMP_FROM_BOOL", "AMP_MODES", "CINE_ONLY_FORMATS", "CONTAINER_BIND_OPTIONS", "FORBIDDEN_CONTAINER_ARGS",
    "HASHED_WHEN_CHANGED", "MAX_BATCH", "MAX_CONFIG_BYTES", "MAX_EPOCHS", "MAX_FOLDS", "MAX_THREADS", "NOT_HASHED",
    "AmpMode", "Config", "ContainerConfig", "CvConfig", "DataConfig", "MotionConfig", "OptimConfig",
    "PerformanceConfig", "PhantomConfig", "RegistrationConfig", "SegmentationConfig", "SlurmConfig",
    "SlurmResources", "config_changes", "dump_yaml", "from_dict", "load_config", "only_longer_training",
    "resolve_performance", "stage_hash", "to_dict",
]
