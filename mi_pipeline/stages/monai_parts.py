"""The MONAI networks and losses the stages use, imported without MONAI's optional extras.

Why: any ``from monai.x import y`` first runs MONAI's package ``__init__``, which imports every
submodule (``load_submodules``), and those import the optional packages they *could* use:
``monai.utils.jupyter_utils`` imports ``matplotlib.pyplot``, the image readers nibabel, pydicom and
PIL, the handlers TensorBoard, ``monai.apps`` boto3 and requests. That was ~0.7 s of CPU (a third
of MONAI's import, a tenth of a stage job's start-up) on the 2-core development VM. MONAI declares
all of them optional (its core install needs only torch and numpy) and takes its "not installed"
branch for each one missing; the networks, blocks and losses below need none of them. So while
MONAI loads, they look absent. MONAI itself has no switch for this (1.6.1: no lazy-loading
setting), and skipping its ``__init__`` is not possible either (``monai.networks`` imports
``monai.apps``; submodules read ``monai.__version__``).

What it changes: in a process that imports a stage, MONAI's own uses of those packages (its image
readers, plots, TensorBoard handlers) report them missing -- nothing the stages, the engine or our
metrics call. Our own code imports nibabel, pydicom or matplotlib directly and gets them as usual
(only MONAI's import is affected), a package already imported before is never hidden, and if MONAI
cannot load that way (another version) it is imported again, plainly.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Iterator, Sequence

OPTIONAL_EXTRAS = ("matplotlib", "nibabel", "pydicom", "PIL", "tensorboard", "tensorboardX", "boto3", "requests",
                   "h5py", "jsonschema")


class _Absent(importlib.abc.MetaPathFinder):
    """Makes the packages ``names`` (and their submodules) fail to import, as if not installed."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden while MONAI loads)", name=name)
        return None


@contextlib.contextmanager
def absent(names: Sequence[str]) -> Iterator[None]:
    """Within the block, ``names`` look uninstalled to new imports; one already imported stays visible."""
    finder = _Absent(frozenset(name for name in names if name not in sys.modules))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def import_monai() -> None:
    """``import monai`` without its optional extras (a no-op when MONAI is already imported)."""
    if "monai" in sys.modules:
        return
    try:
        with absent(OPTIONAL_EXTRAS):
            importlib.import_module("monai")
    except ImportError:  # a MONAI that needs one of them after all: start over, plainly
        for name in [name for name in sys.modules if name == "monai" or name.startswith("monai.")]:
            del sys.modules[name]
        importlib.import_module("monai")


import_monai()

from monai.losses import (  # noqa: E402  (after import_monai: MONAI is loaded by then)
    BendingEnergyLoss,
    DiceCELoss,
    DiceLoss,
    DiffusionLoss,
    GlobalMutualInformationLoss,
    LocalNormalizedCrossCorrelationLoss,
)
from monai.networks.blocks import Warp  # noqa: E402
from monai.networks.nets import GlobalNet, LocalNet, UNet, VoxelMorph, VoxelMorphUNet  # noqa: E402

__all__ = ["BendingEnergyLoss", "DiceCELoss", "DiceLoss", "DiffusionLoss", "GlobalMutualInformationLoss",
           "GlobalNet", "LocalNet", "LocalNormalizedCrossCorrelationLoss", "UNet", "VoxelMorph", "VoxelMorphUNet",
           "Warp", "import_monai"]
