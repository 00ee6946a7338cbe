"""The only module that reads DICOM images: series -> a validated 4D cine (or 3D volume) with a NIfTI affine.

Why a module of its own: a cardiologist's cine arrives as a DICOM series, and DICOM's geometry is
per file (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) in LPS patient coordinates,
while the rest of the pipeline works on arrays in NIfTI voxel order with a RAS affine. Everything
that can go wrong in between (mixed series, a missing slice or phase, a long-axis view in the same
folder, a multi-frame file) becomes one ``InputError`` naming the series and the problem.

Conventions (the same as dcm2niix, so a converted NIfTI and this reader agree):

* files are grouped by SeriesInstanceUID; several *parallel* series (one slice each, the layout many
  scanners write) are merged into one stack;
* slices are ordered by their position along the slice normal (row direction x column direction of
  ImageOrientationPatient), ascending; phases by TriggerTime;
* voxel axis 0 runs along the DICOM columns (the row direction), axis 1 along the rows, axis 2 along
  the slices, axis 3 over phases: ``array[:, :, k, t] = pixels.T``;
* the affine maps voxels to RAS millimetres (DICOM LPS with x and y negated);
* stored values go through the modality LUT (RescaleSlope / RescaleIntercept) before anything else.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mi_pipeline.errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORIENTATION_TOL = 1e-3  # direction cosines equal within this (as dcm2niix)
POSITION_TOL_MM = 0.05  # two instances are the same slice when their positions along the normal agree within this
LONG_AXIS_WORDS = frozenset({"2ch", "3ch", "4ch", "lax", "lvot", "vla", "hla", "localizer", "localiser", "scout",
                             "survey", "longaxis"})  # whole words of SeriesDescription / ProtocolName


@dataclass
class DicomStack:
    """A short-axis stack read from DICOM.

    ``array`` float32 (X, Y, Z, T) (T = 1 for a 3D volume) after rescale; ``affine`` voxel -> RAS mm;
    ``datasets[k][t]`` the pydicom header (no pixels) of slice k, phase t, for writing derived objects
    (DICOM SEG) that reference the source; ``series`` the SeriesInstanceUIDs merged, in slice order.
    """

    array: np.ndarray
    affine: np.ndarray
    datasets: list[list[object]]
    series: list[str]
    folder: Path
    description: str = ""
    trigger_times_ms: list[float] = field(default_factory=list)

    def first_frame_datasets(self, phase: int = 0) -> list[object]:
        return [row[phase] for row in self.datasets]


def is_dicom_file(path: Path) -> bool:
    """A file with the DICOM preamble ("DICM" at byte 128): cheap, and no guessing on other files."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_files(folder: Path) -> list[Path]:
    """DICOM files directly inside ``folder`` (hidden entries ignored), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file() and is_dicom_file(p))


def holds_dicom(folder: Path) -> bool:
    return folder.is_dir() and any(True for _ in dicom_files(folder))


def _series_name(ds: object) -> str:
    uid = str(getattr(ds, "SeriesInstanceUID", "?"))
    desc = str(getattr(ds, "SeriesDescription", "") or "").strip()
    number = getattr(ds, "SeriesNumber", None)
    label = f"series {number} " if number not in (None, "") else "series "
    return f"{label}{uid}" + (f" ({desc})" if desc else "")


def _read_headers(folder: Path) -> dict[str, list[tuple[Path, object]]]:
    """Every DICOM header in ``folder``, grouped by SeriesInstanceUID (pixels not read yet)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = dicom_files(folder)
    if not files:
        raise InputError(f"{folder}: no DICOM files in this folder")
    groups: dict[str, list[tuple[Path, object]]] = defaultdict(list)
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a readable DICOM file ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None
        uid = getattr(ds, "SeriesInstanceUID", None)
        if not uid:
            raise InputError(f"{path}: DICOM file has no SeriesInstanceUID")
        groups[str(uid)].append((path, ds))
    return groups


def _geometry(path: Path, ds: object, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """(row cosine, column cosine, position, (rows, cols)) of one instance, with the PixelSpacing checked."""
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
        if getattr(ds, tag, None) in (None, ""):
            raise InputError(f"{path}: {name}: missing {tag}; cannot place the image in patient coordinates")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(f"{path}: {name}: multi-frame (enhanced) DICOM with {frames} frames is not supported; "
                         "export the series as classic single-frame images")
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        spacing = [float(v) for v in ds.PixelSpacing]
    except (TypeError, ValueError):
        raise InputError(f"{path}: {name}: geometry tags are not numbers") from None
    if iop.size != 6 or ipp.size != 3 or len(spacing) != 2 or min(spacing) <= 0:
        raise InputError(f"{path}: {name}: malformed ImageOrientationPatient/ImagePositionPatient/PixelSpacing")
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(row @ col) > 0.01:
        raise InputError(f"{path}: {name}: ImageOrientationPatient is not two orthogonal unit vectors")
    return row, col, ipp, (int(ds.Rows), int(ds.Columns))


def _check_not_long_axis(name: str, ds: object, folder: Path) -> None:
    text = " ".join(str(getattr(ds, tag, "") or "") for tag in ("SeriesDescription", "ProtocolName")).lower()
    text = text.replace("-", "").replace("long axis", "longaxis")  # "4-CH", "long axis" -> one word
    hit = next((w for w in re.split(r"[^a-z0-9]+", text) if w in LONG_AXIS_WORDS), None)
    if hit:
        raise InputError(f"{folder}: {name}: looks like a long-axis or localiser view ({hit!r} in its description), "
                         "not a short-axis stack; remove it from the folder")


@dataclass
class _Instance:
    path: Path
    ds: object
    series: str
    position: float  # along the stack normal, mm
    ipp: np.ndarray


def read_stack(folder: str | os.PathLike[str], *, what: str = "cine", min_phases: int = 2,
               max_phases: int | None = None) -> DicomStack:
    """The short-axis stack in ``folder`` (one series, or one parallel series per slice).

    ``min_phases`` 2 for a cine; a 3D volume (LGE) reads with ``min_phases=1, max_phases=1``.
    """
    folder = Path(folder)
    groups = _read_headers(folder)
    # orientation of every series; the stack is the orientation holding most instances
    orient: dict[str, tuple[np.ndarray, np.ndarray, tuple[int, int], list[float]]] = {}
    for uid, items in groups.items():
        name = _series_name(items[0][1])
        _check_not_long_axis(name, items[0][1], folder)
        first = None
        for path, ds in items:
            row, col, _, size = _geometry(path, ds, name)
            spacing = [float(v) for v in ds.PixelSpacing]
            if first is None:
                first = (row, col, size, spacing)
            elif (np.abs(row - first[0]).max() > ORIENTATION_TOL or np.abs(col - first[1]).max() > ORIENTATION_TOL):
                raise InputError(f"{folder}: {name}: mixed image orientations inside one series ({path.name} differs)")
            elif size != first[2] or not np.allclose(spacing, first[3], atol=1e-4):
                raise InputError(f"{folder}: {name}: mixed matrix size or pixel spacing inside one series "
                                 f"({path.name}: {size[0]}x{size[1]}, {spacing} mm)")
        orient[uid] = first  # type: ignore[assignment]
    def parallel_count(uid: str) -> int:  # instances in all series sharing this series' orientation
        row, col = orient[uid][0], orient[uid][1]
        return sum(len(groups[u]) for u, o in orient.items()
                   if np.abs(o[0] - row).max() <= ORIENTATION_TOL and np.abs(o[1] - col).max() <= ORIENTATION_TOL)

    ref_uid = max(groups, key=lambda u: (parallel_count(u), len(groups[u]), u))
    row0, col0, size0, spacing0 = orient[ref_uid]
    normal = np.cross(row0, col0)
    for uid, (row, col, size, spacing) in orient.items():
        name = _series_name(groups[uid][0][1])
        if np.abs(row - row0).max() > ORIENTATION_TOL or np.abs(col - col0).max() > ORIENTATION_TOL:
            angle = float(np.degrees(np.arccos(np.clip(abs(np.cross(row, col) @ normal), 0, 1))))
            raise InputError(f"{folder}: {name}: not parallel to the short-axis stack of "
                             f"{_series_name(groups[ref_uid][0][1])} (planes {angle:.0f} deg apart: a long-axis view "
                             "or another acquisition?); give each stack its own folder")
        if size != size0 or not np.allclose(spacing, spacing0, atol=1e-4):
            raise InputError(f"{folder}: {name}: matrix {size[0]}x{size[1]} / pixel spacing {spacing} mm differs from "
                             f"{_series_name(groups[ref_uid][0][1])} ({size0[0]}x{size0[1]}, {spacing0} mm)")

    # slices: positions along the normal; each position must come from one series only
    instances = [_Instance(path, ds, uid, float(np.asarray([float(v) for v in ds.ImagePositionPatient]) @ normal),
                           np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64))
                 for uid, items in groups.items() for path, ds in items]
    instances.sort(key=lambda i: i.position)
    slices: list[list[_Instance]] = []
    for inst in instances:
        if slices and abs(inst.position - slices[-1][0].position) <= POSITION_TOL_MM:
            slices[-1].append(inst)
        else:
            slices.append([inst])
    for group in slices:
        uids = sorted({i.series for i in group})
        if len(uids) > 1:
            names = " and ".join(_series_name(groups[u][0][1]) for u in uids[:2])
            raise InputError(f"{folder}: {names} both hold a slice at {group[0].position:.1f} mm along the stack "
                             "normal (repeated acquisition?); keep one of them")
    if len(slices) < 2:
        raise InputError(f"{folder}: {_series_name(groups[ref_uid][0][1])}: a single slice position; a short-axis "
                         "stack needs at least 2 parallel slices")

    # phases within each slice, by TriggerTime
    ordered: list[list[_Instance]] = []
    trigger_ref: list[float] = []
    for group in slices:
        name = _series_name(group[0].ds)
        times = []
        for inst in group:
            value = getattr(inst.ds, "TriggerTime", None)
            if value in (None, "") and len(group) > 1:
                raise InputError(f"{inst.path}: {name}: no TriggerTime; cannot order the cardiac phases")
            times.append(float(value) if value not in (None, "") else 0.0)
        if len(set(times)) != len(times):
            raise InputError(f"{folder}: {name}: two images of the slice at {group[0].position:.1f} mm share a "
                             "TriggerTime (duplicate files or two acquisitions mixed)")
        order = np.argsort(times, kind="stable")
        ordered.append([group[i] for i in order])
        if not trigger_ref:
            trigger_ref = [times[i] for i in order]
    counts = [len(g) for g in ordered]
    if len(set(counts)) > 1:
        full = max(counts)
        bad = next(g for g in ordered if len(g) != full)
        raise InputError(f"{folder}: {_series_name(bad[0].ds)}: incomplete: the slice at {bad[0].position:.1f} mm "
                         f"has {len(bad)} phase(s), others up to {full}")
    nt = counts[0]
    if nt < min_phases:
        raise InputError(f"{folder}: {_series_name(ordered[0][0].ds)}: {what} has {nt} phase(s) per slice; "
                         f"need at least {min_phases}")
    if max_phases is not None and nt > max_phases:
        raise InputError(f"{folder}: {_series_name(ordered[0][0].ds)}: {what} has {nt} images per slice position; "
                         f"expected {max_phases} (a 3D volume)")
    steps = np.diff([g[0].position for g in ordered])
    if steps.max() - steps.min() > max(0.1, 0.02 * float(np.median(steps))):
        gap = int(np.argmax(steps))
        raise InputError(f"{folder}: {_series_name(ordered[0][0].ds)}: incomplete: uneven slice spacing "
                         f"({steps.min():.2f} to {steps.max():.2f} mm; a slice missing after "
                         f"{ordered[gap][0].position:.1f} mm?)")

    array = np.empty((size0[1], size0[0], len(ordered), nt), dtype=np.float32)
    datasets: list[list[object]] = []
    for k, group in enumerate(ordered):
        row_ds = []
        for t, inst in enumerate(group):
            array[:, :, k, t] = _pixels(inst.path, _series_name(inst.ds), size0).T
            row_ds.append(inst.ds)
        datasets.append(row_ds)
    if not np.isfinite(array).all():
        raise InputError(f"{folder}: {_series_name(ordered[0][0].ds)}: pixel values are NaN or Inf after rescale")
    if float(array.max()) == float(array.min()):
        raise InputError(f"{folder}: {_series_name(ordered[0][0].ds)}: image is constant "
                         f"(every pixel = {float(array.min()):g})")

    lps = np.eye(4)
    lps[:3, 0] = row0 * spacing0[1]  # along a row = increasing column index, spaced by the column spacing
    lps[:3, 1] = col0 * spacing0[0]
    lps[:3, 2] = (ordered[-1][0].ipp - ordered[0][0].ipp) / (len(ordered) - 1)
    lps[:3, 3] = ordered[0][0].ipp
    series = list(dict.fromkeys(g[0].series for g in ordered))
    desc = str(getattr(ordered[0][0].ds, "SeriesDescription", "") or "")
    return DicomStack(array=array, affine=LPS_TO_RAS @ lps, datasets=datasets, series=series, folder=folder,
                      description=desc, trigger_times_ms=trigger_ref)


def _pixels(path: Path, name: str, size: tuple[int, int]) -> np.ndarray:
    """Stored pixels of one file through the modality LUT (slope/intercept), float32 (rows, cols)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
        values = apply_modality_lut(stored, ds)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for broken pixel data; one line for the user
        text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: {name}: cannot decode pixel data ({text})") from None
    values = np.asarray(values, dtype=np.float32)
    if values.shape != size:
        raise InputError(f"{path}: {name}: pixel data is {values.shape}, header says {size}")
    return values
