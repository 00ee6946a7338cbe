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


def test_a_stage_job_loads_monai_without_its_optional_extras() -> None:
    """What ``python -m mi_pipeline.train`` imports before its first step: the stage runner and the stages.
    MONAI comes in (the networks), its optional extras do not (stages/monai_parts.py); our own later
    imports of them still work, and MONAI's networks and losses build."""
    extras = ("matplotlib", "tensorboard", "torch.utils.tensorboard", "pydicom", "highdicom", "nibabel", "PIL")
    code = ("import sys\n"
            "import mi_pipeline.cli.train, mi_pipeline.orchestration.stage_runner, mi_pipeline.stages.registry\n"
            f"print(sorted(m for m in {extras!r} if m in sys.modules), 'monai' in sys.modules)\n"
            "import matplotlib.pyplot, nibabel, pydicom\n"
            "from mi_pipeline.stages import monai_parts as mp\n"
            "mp.UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))\n"
            "mp.DiceCELoss(to_onehot_y=True, softmax=True)\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True", "ok"], done.stdout
