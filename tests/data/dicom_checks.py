"""Independent checks on every DICOM file we write: dciodvfy (dicom3tools) and dcmdump (dcmtk), and a SEG's
pixels read back with highdicom and compared with the NIfTI mask.

The validators are Debian packages (`apt-get install dicom3tools dcmtk`, done by `.ci/run`). Without them
a test skips with the reason, except under CI=true, where a missing validator is a failure: CI must
not pass by validating nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

VALIDATORS = ("dciodvfy", "dcmdump")


def require_validators() -> None:
    missing = [tool for tool in VALIDATORS if shutil.which(tool) is None]
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed (apt-get install dicom3tools dcmtk)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}: the DICOM output must be validated in CI")
    pytest.skip(reason)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) dciodvfy reports on ``path``; dcmdump must read the file too."""
    require_validators()
    dump = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert dump.returncode == 0 and "E:" not in dump.stderr, f"dcmdump {path}: {dump.stderr.strip()}"
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def assert_valid(path: Path) -> list[str]:
    """No dciodvfy error on ``path``; returns its warnings (for the summary)."""
    errors, warnings = dciodvfy(path)
    assert not errors, f"dciodvfy {path}:\n" + "\n".join(errors)
    return warnings


def seg_planes(path: Path) -> dict[tuple[float, float, float], dict[int, np.ndarray]]:
    """The SEG's frames read with highdicom, by plane position (mm, rounded) and segment number."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    pixels = seg.pixel_array
    pixels = pixels if pixels.ndim == 3 else pixels[None]
    out: dict[tuple[float, float, float], dict[int, np.ndarray]] = {}
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ipp = tuple(round(float(v), 2) for v in group.PlanePositionSequence[0].ImagePositionPatient)
        segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out.setdefault(ipp, {})[segment] = pixels[i].astype(bool)  # type: ignore[index]
    return out


def assert_seg_equals_mask(path: Path, ed_datasets: list, seg_xyz: np.ndarray) -> None:
    """Every slice of the NIfTI mask (X, Y, Z on the cine grid) is the SEG frame at that slice's ED position:
    segment 1 = myocardium label, 2 = infarct label."""
    planes = seg_planes(path)
    assert len(planes) == seg_xyz.shape[2], f"{path}: {len(planes)} planes, the mask has {seg_xyz.shape[2]} slices"
    for k, ds in enumerate(ed_datasets):
        ipp = tuple(round(float(v), 2) for v in ds.ImagePositionPatient)
        assert ipp in planes, f"{path}: no frame at slice {k}'s position {ipp}"
        for segment, label in ((1, 1), (2, 2)):
            np.testing.assert_array_equal(planes[ipp][segment], seg_xyz[:, :, k].T == label,
                                          err_msg=f"{path}: slice {k} segment {segment}")
