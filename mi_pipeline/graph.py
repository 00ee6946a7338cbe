r"""The pipeline's stages and how they depend on each other: the one place this is spelled.

Pure data with no imports, so the config (which hashes a stage's sections) and the orchestrator
(which plans and submits) can both use it without loading torch. What each trained stage *does*
(its task, its network, how its best model is loaded) is in ``stages/registry.py``.

    data --> motion -------+
         \-> registration -+--> segmentation
"""

from __future__ import annotations

STAGES: tuple[str, ...] = ("data", "motion", "registration", "segmentation")
"""Pipeline steps in the seed's order; step N of the guide is STAGES[N-1]."""

MODEL_STAGES: tuple[str, ...] = STAGES[1:]
"""The stages that train a model (``checkpoints/<stage>/best_model.pth``)."""

UPSTREAM: dict[str, tuple[str, ...]] = {
    "data": (),
    "motion": ("data",),
    "registration": ("data",),
    "segmentation": ("motion", "registration"),
}
"""Direct dependencies: a stage runs only after these (SLURM ``afterok``)."""


NEEDS_LGE: tuple[str, ...] = ("registration", "segmentation")
"""Stages that learn from LGE images (registration aligns cine to LGE; segmentation learns from LGE
labels carried into cine space): a cine-only dataset leaves them out."""


def downstream(stage: str) -> list[str]:
    """Stages that (transitively) depend on ``stage``, in pipeline order."""
    found: list[str] = []
    for other in STAGES:
        if any(up == stage or up in found for up in UPSTREAM[other]):
            found.append(other)
    return found


def config_sections(stage: str) -> tuple[str, ...]:
    """Config sections a stage's result depends on: its own and, transitively, its upstream stages'."""
    sections: list[str] = []
    for up in UPSTREAM[stage]:
        sections += [s for s in config_sections(up) if s not in sections]
    return (*sections, stage)
