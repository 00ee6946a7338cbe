"""mi_pipeline: resumable training of a three-model MI-estimation system from cardiac cine MRI."""

__version__ = "0.1.0"

STAGES = ("data", "motion", "registration", "segmentation")
"""Pipeline steps in the seed's order; step N of the guide is STAGES[N-1]."""

MODEL_STAGES = STAGES[1:]
