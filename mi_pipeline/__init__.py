"""mi_pipeline: resumable training of a three-model MI-estimation system from cardiac cine MRI.

Where things live (docs/ARCHITECTURE.md has the tour): ``cli/`` the commands (``python -m
mi_pipeline.<command>`` are thin entry points into it), ``orchestration/`` plan, progress record,
executors and containers, ``stages/`` the stage graph, the three trained stages and their registry,
``engine/`` the training loop and checkpoints, ``data/`` datasets, preprocessing and the cache;
``inference``, ``evaluation``, ``metrics`` and ``qc`` are libraries; ``config``, ``layout``,
``errors`` and ``fsio`` are the foundations everything else stands on.
"""

from mi_pipeline import compat

__version__ = "0.1.0"

compat.install()
