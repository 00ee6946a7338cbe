"""What keeps runs and jobs made by earlier versions working: every shim, in one table.

- 0.1.0: modules moved into ``orchestration/``. Shim: ``MOVED`` below (old import paths resolve).
  May go when no 0.1.0 job pickle can still be requeued.
- ``stages/graph.py`` became ``graph.py``. Shim: ``MOVED``. May go when no job pickled before the move is queued.
- 0.1.0: ``amp: true/false`` became ``off/bf16/fp16``. Shim: ``config/compat.AMP_FROM_BOOL``. May go when configs
  with booleans are rewritten.
- 0.1.0: a planned restart became a record token instead of ``StageJob.restart``. Shim: ``StageJob.restart``
  is read on a job's first attempt only. May go when no 0.1.0 job pickle remains.
- Config keys added after 0.1.0. Shim: ``config/compat.HASHED_WHEN_CHANGED`` (hashed only when set). May go when
  checkpoints of 0.1.0 runs are retrained. One of them changes what an unfinished stage does when it resumes:
  ``motion.label_dice_weight`` (default 1) adds the cine labels' Dice to motion's loss where every training
  subject has cine labels, also for a motion stage started before the key existed.
- The cache manifest counts LGE subjects. Shim: a manifest without the count reads as "unknown". May go
  when old caches are re-prepared.
- Checkpoint format 2 packs a file's tensors into one buffer per dtype (``engine/packing.py``). Shim:
  ``engine/checkpoint.READABLE_VERSIONS`` keeps format 1 (one record per tensor) readable: it loads as it
  is, through the same CRC check and ``weights_only`` load, and a run resumed from it writes format 2 from
  its next save. May go when no ``last.pth``/``best_model.pth`` written before format 2 is still used.

A SLURM job pickled by submitit before a move names its callable by the old path (e.g.
``mi_pipeline.slurm_executor.StageJob``, holding a ``mi_pipeline.executors.StageCommand``); when it
starts or is requeued after an upgrade, unpickling imports that path. Each old name resolves to the
module object at its new home -- the same module, not a copy -- so there is still one definition of
everything.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

MOVED: dict[str, str] = {
    "mi_pipeline.slurm_executor": "mi_pipeline.orchestration.slurm_executor",
    "mi_pipeline.executors": "mi_pipeline.orchestration.local_executor",
    "mi_pipeline.plan": "mi_pipeline.orchestration.plan",
    "mi_pipeline.progress": "mi_pipeline.orchestration.progress",
    "mi_pipeline.container": "mi_pipeline.orchestration.container",
    "mi_pipeline.stages.graph": "mi_pipeline.graph",
}


class _Alias(importlib.abc.Loader):
    """Loads an old name as the already-importable new module (its own spec left untouched)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._real_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._real_spec  # the import system set the alias spec on it: put the real one back


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, _Alias(MOVED[name]))


def install() -> None:
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
