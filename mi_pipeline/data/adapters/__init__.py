"""Dataset adapters: every layout a site may have, read into the same validated ``RawSubject``.

``data.format`` picks one:

=========  ===============================================================  =====================
format     layout                                                           provides
=========  ===============================================================  =====================
phantom    the built-in generator, written in the generic layout            cine, LGE, labels both
generic    ``<root>/<subject>/cine.nii.gz, lge.nii.gz, lge_label.nii.gz``   cine, LGE, LGE labels
manifest   a CSV or YAML file listing per subject the paths (inside root)   as listed
acdc       ``patientXXX/patientXXX_4d.nii.gz``, ``Info.cfg``, ``_frameNN_gt``  cine, ED/ES masks
mnms       M&Ms-1 ``<ID>/<ID>_sa.nii.gz``, ``<ID>_sa_gt.nii.gz``              cine, ED/ES masks
emidec     ``Case_*/Images/Case_*.nii.gz``, ``Case_*/Contours/Case_*.nii.gz``  LGE, LGE labels
dicom      ``<subject>/cine/``, ``lge/`` (DICOM series), ``lge_label.nii.gz``   cine, LGE, LGE labels
=========  ===============================================================  =====================

Cine-only data (ACDC, M&Ms) serves the motion stage (training and evaluation on the real ED/ES
masks); registration and segmentation refuse it with a message saying they need LGE. EMIDEC has
no cine: its subjects need a cine of the same patient (``Case_*/Cine/Case_*.nii.gz`` or
``Case_*/cine.nii.gz``) before they can enter the pipeline, which is built on the cine grid.
Label codes are mapped to ours: 0 background, 1 LV cavity, 2 myocardium, 3 infarct, 4 no-reflow.
"""

from __future__ import annotations

from pathlib import Path

from mi_pipeline.data.generic import RawSubject
from mi_pipeline.errors import ConfigError

FORMATS = ("phantom", "generic", "manifest", "acdc", "mnms", "emidec", "dicom")


def _module(fmt: str):
    if fmt in ("phantom", "generic"):
        from mi_pipeline.data import generic as mod
    elif fmt == "manifest":
        from mi_pipeline.data.adapters import manifest as mod
    elif fmt == "acdc":
        from mi_pipeline.data.adapters import acdc as mod
    elif fmt == "mnms":
        from mi_pipeline.data.adapters import mnms as mod
    elif fmt == "emidec":
        from mi_pipeline.data.adapters import emidec as mod
    elif fmt == "dicom":
        from mi_pipeline.data.adapters import dicom_layout as mod
    else:
        raise ConfigError(f"data.format: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return mod


def list_subjects(fmt: str, root: str | Path) -> list[str]:
    """Sorted subject ids of the dataset at ``root`` (a folder, or the manifest file)."""
    return _module(fmt).list_subjects(Path(root))


def load_subject(fmt: str, root: str | Path, subject: str) -> RawSubject:
    """One validated subject (InputError naming the file and the problem otherwise)."""
    return _module(fmt).load_subject(Path(root), subject)
