"""A stage job's start-up is import-bound: the engine (and the stage runner) import nothing that training
does not need -- no figures, TensorBoard or DICOM packages, and not MONAI (whose `__init__` loads every
submodule: matplotlib, TensorBoard, nibabel, pydicom) until a stage builds its network."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import env

HEAVY = ("matplotlib", "tensorboard", "torch.utils.tensorboard", "pydicom", "highdicom", "monai")


def test_engine_and_stage_runner_import_nothing_heavy() -> None:
    code = ("import sys\n"
            "import mi_pipeline.engine.trainer, mi_pipeline.engine.runlog, mi_pipeline.engine.tracking\n"
            "import mi_pipeline.orchestration.stage_runner\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])\n")
    done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"imported at start: {done.stdout.strip()}"
