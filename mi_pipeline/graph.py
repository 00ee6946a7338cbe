r"""The pipeline's stages and how they depend on each other: the one place this is spelled.

Pure data with no imports, so the config (which hashes a stage's sections) and the orchestrator
(which plans and submits) can both use it without loading torch. What each trained stage *does*
(its task, its network, how its best model is loaded) is in ``stages/registry.py``.

    data --> motion -------+
         \-> registration -+--> segmentation

Without LGE images registration is left out; segmentation then depends on motion alone and learns the
myocardium only, from cine labels, if the data has them (``left_out``).
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

CINE_LABELS_SUFFICE: tuple[str, ...] = ("segmentation",)
"""Of ``NEEDS_LGE``, those expert cine labels can teach instead: segmentation's myocardium part, from the
cine ED labels (no registration, no infarct class), when the data has no LGE but has cine labels."""


def left_out(lge: bool | None, cine_labels: bool | None) -> tuple[str, ...]:
    """The stages the data cannot feed: without LGE (``lge`` False), those that learn from it, except
    those cine labels teach when every subject has them (``cine_labels`` True); None = not known yet."""
    if lge is not False:
        return ()
    return tuple(s for s in NEEDS_LGE if not (cine_labels is True and s in CINE_LABELS_SUFFICE))


def upstream(stage: str, omitted: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``UPSTREAM[stage]`` less the stages left out (``omitted``): nothing to wait on, no model to read."""
    return tuple(up for up in UPSTREAM[stage] if up not in omitted)


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
