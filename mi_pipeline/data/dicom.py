"""The only module that reads DICOM images: series -> a validated 4D cine (or 3D volume) with a NIfTI affine.

Why a module of its own: a cardiologist's cine arrives as a DICOM series, and DICOM's geometry is
per file (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) in LPS patient coordinates,
while the rest of the pipeline works on arrays in NIfTI voxel order with a RAS affine. What a
folder holds beside the stack (other series, long-axis views, localisers) is left out with a note
naming it and why; what makes the stack itself unreadable (a missing slice or phase, mixed
orientations inside a series, undecodable pixels) is one ``InputError`` naming the series and the
problem.

Conventions (the same as dcm2niix, so a converted NIfTI and this reader agree):

* which files are images is ``data.dicom_files``' job (DICOMDIR followed, non-image objects and
  non-DICOM files skipped with a note, files without a preamble read);
* files are grouped by SeriesInstanceUID; several *parallel* series (one slice each, the layout many
  scanners write) are merged into one stack;
* several series in one folder (a whole study, a CD): series described as long-axis or localiser
  views are left out; the stack is the orientation holding the most images, and series in another
  orientation or with another matrix or pixel spacing are left out; when parallel series hold the
  same slice positions (a repeated acquisition, two exports of one cine) the series with the most
  images wins, ties to the highest SeriesNumber (the later acquisition), then to the
  SeriesInstanceUID. Each series left out is one note naming it and why. ``series=`` (predict's
  ``--series UID|number``) keeps one series and ignores the others;
* an enhanced (multi-frame) MR image is read frame by frame from its functional groups (plane
  position and orientation, pixel measures, trigger delay, rescale);
* slices are ordered by their position along the slice normal (row direction x column direction of
  ImageOrientationPatient), ascending; phases by TriggerTime (by InstanceNumber, with a note, when no
  image has one); a slice with a few phases fewer than the others (``MIN_PHASE_SHARE``) is matched to
  them by nearest trigger time, with a note;
* voxel axis 0 runs along the DICOM columns (the row direction), axis 1 along the rows, axis 2 along
  the slices, axis 3 over phases: ``array[:, :, k, t] = pixels.T``;
* the affine maps voxels to RAS millimetres (DICOM LPS with x and y negated);
* stored values go through the modality LUT (RescaleSlope / RescaleIntercept) before anything else;
  MONOCHROME1 images (lowest value shown white) are first flipped within their stored range, so blood
  stays bright whichever the writer chose.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mi_pipeline.data import dicom_files
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
    datasets: list[list[Any]]
    series: list[str]
    folder: Path
    description: str = ""
    trigger_times_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the reader skipped or chose, one line each
    frames: list[list[int | None]] = field(default_factory=list)  # 1-based frame of an enhanced file, else None
    paths: list[list[Path]] = field(default_factory=list)  # the file of each [slice][phase]

    def first_frame_datasets(self, phase: int = 0) -> list[Any]:
        return [row[phase] for row in self.datasets]


def holds_dicom(folder: Path) -> bool:
    """Whether ``folder`` holds DICOM files (with or without preamble, or a DICOMDIR)."""
    return dicom_files.holds_dicom(folder)


def _series_name(ds: Any) -> str:
    uid = str(getattr(ds, "SeriesInstanceUID", "?"))
    desc = str(getattr(ds, "SeriesDescription", "") or "").strip()
    number = getattr(ds, "SeriesNumber", None)
    label = f"series {number} " if number not in (None, "") else "series "
    return f"{label}{uid}" + (f" ({desc})" if desc else "")


@dataclass
class _Header:
    """One image of the stack: a single-frame file, or one frame (1-based) of an enhanced multi-frame file."""

    path: Path
    ds: Any  # the file's header, or for a frame a flat copy with that frame's geometry and timing
    frame: int | None = None


def _item(ds: Any, keyword: str) -> Any:
    """The first item of a functional-group sequence, or None."""
    seq = ds.get(keyword) if ds is not None else None
    return seq[0] if seq else None


def _frame_value(groups: list[Any], sequence: str, keyword: str) -> Any:
    """``keyword`` from ``sequence`` in the first functional group (per-frame, then shared) that has it."""
    for group in groups:
        item = _item(group, sequence)
        if item is not None and keyword in item:
            return item[keyword].value
    return None


def _frames_of(path: Path, ds: Any) -> list[_Header]:
    """An enhanced multi-frame image as one flat header per frame (geometry, trigger time, rescale)."""
    from pydicom.dataset import Dataset

    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    count = int(ds.get("NumberOfFrames", len(per_frame)) or 0)
    if len(per_frame) != count:
        raise InputError(f"{path}: enhanced image with {count} frames has {len(per_frame)} per-frame functional groups")
    flat_base = Dataset()
    for element in ds:
        if element.keyword not in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
                                   "NumberOfFrames", "PixelData"):
            flat_base.add(element)
    out = []
    for index, group in enumerate(per_frame, start=1):
        groups = [group, shared]
        flat = Dataset()
        flat.update(flat_base)
        for sequence, keyword in (("PlanePositionSequence", "ImagePositionPatient"),
                                  ("PlaneOrientationSequence", "ImageOrientationPatient"),
                                  ("PixelMeasuresSequence", "PixelSpacing"),
                                  ("PixelMeasuresSequence", "SliceThickness"),
                                  ("PixelValueTransformationSequence", "RescaleSlope"),
                                  ("PixelValueTransformationSequence", "RescaleIntercept")):
            value = _frame_value(groups, sequence, keyword)
            if value is not None:
                setattr(flat, keyword, value)
        trigger = _frame_value(groups, "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime")
        if trigger is None:
            trigger = _frame_value(groups, "UnassignedPerFrameConvertedAttributesSequence", "TriggerTime")
        if trigger is None:
            trigger = _frame_value(groups, "UnassignedSharedConvertedAttributesSequence", "TriggerTime")
        if trigger is not None:
            flat.TriggerTime = trigger
        out.append(_Header(path, flat, index))
    return out


def _read_headers(folder: Path, series: str | None = None) -> tuple[dict[str, list[_Header]], list[str]]:
    """Every image header in ``folder`` (pixels not read yet), grouped by SeriesInstanceUID, and the notes of
    what was skipped; ``series`` (a SeriesInstanceUID or SeriesNumber) keeps that series alone."""
    found = dicom_files.find_images(folder)
    if not found.headers:
        extra = f" ({'; '.join(found.notes)})" if found.notes else ""
        raise InputError(f"{folder}: no DICOM images in this folder{extra}")
    groups: dict[str, list[_Header]] = defaultdict(list)
    for path, ds in found.headers:
        uid = getattr(ds, "SeriesInstanceUID", None)
        if not uid:
            raise InputError(f"{path}: DICOM file has no SeriesInstanceUID")
        if "PerFrameFunctionalGroupsSequence" in ds:
            groups[str(uid)].extend(_frames_of(path, ds))
        else:
            groups[str(uid)].append(_Header(path, ds))
    notes = list(found.notes)
    if series is not None:
        groups, chosen_note = _only_series(folder, groups, series)
        notes.append(chosen_note)
    return groups, notes


def _only_series(folder: Path, groups: dict[str, list[_Header]], wanted: str) -> tuple[dict[str, list[_Header]], str]:
    """The series named by ``wanted`` (its UID or its SeriesNumber) alone, and a note naming those ignored."""
    keep = [u for u, items in groups.items()
            if wanted == u or wanted == str(getattr(items[0].ds, "SeriesNumber", "") or "")]
    if not keep:
        names = "; ".join(_series_name(items[0].ds) for items in groups.values())
        raise InputError(f"{folder}: no series {wanted!r} here (UID or SeriesNumber); the folder holds: {names}")
    ignored = [_series_name(groups[u][0].ds) for u in groups if u not in keep]
    note = f"{folder}: --series {wanted}: kept {', '.join(_series_name(groups[u][0].ds) for u in keep)}" + (
        f"; ignored {len(ignored)} other series ({'; '.join(ignored)})" if ignored else "")
    return {u: groups[u] for u in keep}, note


def _choose_overlapping(folder: Path, groups: dict[str, list[_Header]], positions: dict[str, set[float]]
                        ) -> tuple[list[str], list[str]]:
    """Parallel series that hold the same slice positions: keep by the documented rule (most images, then
    highest SeriesNumber, then UID) and return (kept UIDs, one note per series left out)."""
    def rank(uid: str) -> tuple[int, int, str]:
        number = getattr(groups[uid][0].ds, "SeriesNumber", None) or -1
        try:
            n = int(number)
        except (TypeError, ValueError):
            n = -1
        return (len(groups[uid]), n, uid)

    kept: list[str] = []
    notes = []
    taken: list[float] = []
    for uid in sorted(groups, key=rank, reverse=True):
        clash = [p for p in positions[uid] if any(abs(p - q) <= POSITION_TOL_MM for q in taken)]
        if clash:
            winner = next(u for u in kept if any(abs(p - q) <= POSITION_TOL_MM for p in clash for q in positions[u]))
            notes.append(f"{folder}: skipped {_series_name(groups[uid][0].ds)}: it holds slices that "
                         f"{_series_name(groups[winner][0].ds)} also holds (kept by the rule: most images, then "
                         "highest SeriesNumber; choose another with --series)")
            continue
        kept.append(uid)
        taken.extend(positions[uid])
    return kept, notes


def _geometry(path: Path, ds: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """(row cosine, column cosine, position, (rows, cols)) of one instance, with the PixelSpacing checked."""
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
        if getattr(ds, tag, None) in (None, ""):
            raise InputError(f"{path}: {name}: missing {tag}; cannot place the image in patient coordinates")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(f"{path}: {name}: multi-frame image with {frames} frames but no per-frame functional "
                         "groups (no geometry per frame); export the series as classic single-frame images")
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


def _long_axis_word(ds: Any) -> str | None:
    """The word of SeriesDescription / ProtocolName that names a long-axis or localiser view, if any."""
    text = " ".join(str(getattr(ds, tag, "") or "") for tag in ("SeriesDescription", "ProtocolName")).lower()
    text = text.replace("-", "").replace("long axis", "longaxis")  # "4-CH", "long axis" -> one word
    return next((w for w in re.split(r"[^a-z0-9]+", text) if w in LONG_AXIS_WORDS), None)


def _without_long_axis(folder: Path, groups: dict[str, list[_Header]], notes: list[str]) -> dict[str, list[_Header]]:
    """The series not described as long-axis or localiser views; those are skipped with a note, or are one
    error when nothing else is left."""
    words = {uid: _long_axis_word(items[0].ds) for uid, items in groups.items()}
    kept = {uid: items for uid, items in groups.items() if not words[uid]}
    if not kept:
        uid = next(iter(groups))
        raise InputError(f"{folder}: {_series_name(groups[uid][0].ds)}: looks like a long-axis or localiser view "
                         f"({words[uid]!r} in its description), not a short-axis stack; remove it from the folder")
    for uid in groups:
        if words[uid]:
            notes.append(f"{folder}: skipped {_series_name(groups[uid][0].ds)}: a long-axis or localiser view "
                         f"({words[uid]!r} in its description)")
    return kept


@dataclass
class _Instance:
    path: Path
    ds: Any
    series: str
    position: float  # along the stack normal, mm
    ipp: np.ndarray
    frame: int | None = None  # 1-based frame of an enhanced file


Orientation = tuple[np.ndarray, np.ndarray, tuple[int, int], list[float]]


def _orientations(folder: Path, groups: dict[str, list[_Header]]) -> dict[str, Orientation]:
    """(row cosine, column cosine, matrix, pixel spacing) of every series, checked constant inside it."""
    orient = {}
    for uid, items in groups.items():
        name = _series_name(items[0].ds)
        first = None
        for h in items:
            row, col, _, size = _geometry(h.path, h.ds, name)
            spacing = [float(v) for v in h.ds.PixelSpacing]
            if first is None:
                first = (row, col, size, spacing)
            elif (np.abs(row - first[0]).max() > ORIENTATION_TOL or np.abs(col - first[1]).max() > ORIENTATION_TOL):
                raise InputError(f"{folder}: {name}: mixed image orientations inside one series ({h.path.name} differs)")
            elif size != first[2] or not np.allclose(spacing, first[3], atol=1e-4):
                raise InputError(f"{folder}: {name}: mixed matrix size or pixel spacing inside one series "
                                 f"({h.path.name}: {size[0]}x{size[1]}, {spacing} mm)")
        orient[uid] = first
    return orient  # type: ignore[return-value]


def _ipp(ds: Any) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)


def read_stack(folder: str | os.PathLike[str], *, what: str = "cine", min_phases: int = 2,
               max_phases: int | None = None, series: str | None = None) -> DicomStack:
    """The short-axis stack in ``folder`` (one series, or one parallel series per slice).

    ``min_phases`` 2 for a cine; a 3D volume (LGE) reads with ``min_phases=1, max_phases=1``.
    ``series`` (a SeriesInstanceUID or SeriesNumber) reads that series alone.
    """
    folder = Path(folder)
    groups, notes = _read_headers(folder, series)
    groups = _without_long_axis(folder, groups, notes)
    # orientation of every series; the stack is the orientation holding most instances
    orient = _orientations(folder, groups)

    def parallel_count(uid: str) -> int:  # instances in all series sharing this series' orientation
        row, col = orient[uid][0], orient[uid][1]
        return sum(len(groups[u]) for u, o in orient.items()
                   if np.abs(o[0] - row).max() <= ORIENTATION_TOL and np.abs(o[1] - col).max() <= ORIENTATION_TOL)

    ref_uid = max(groups, key=lambda u: (parallel_count(u), len(groups[u]), u))
    row0, col0, size0, spacing0 = orient[ref_uid]
    normal = np.cross(row0, col0)
    ref_name = _series_name(groups[ref_uid][0].ds)
    for uid, (row, col, size, spacing) in list(orient.items()):
        name, why = _series_name(groups[uid][0].ds), ""
        if np.abs(row - row0).max() > ORIENTATION_TOL or np.abs(col - col0).max() > ORIENTATION_TOL:
            angle = float(np.degrees(np.arccos(np.clip(abs(np.cross(row, col) @ normal), 0, 1))))
            why = (f"not parallel to the short-axis stack of {ref_name} (planes {angle:.0f} deg apart: a long-axis "
                   "view or another acquisition?)")
        elif size != size0 or not np.allclose(spacing, spacing0, atol=1e-4):
            why = (f"matrix {size[0]}x{size[1]} / pixel spacing {spacing} mm differs from {ref_name} "
                   f"({size0[0]}x{size0[1]}, {spacing0} mm)")
        if why and series is not None:  # the series asked for must be one stack
            raise InputError(f"{folder}: {name}: {why}")
        if why:
            notes.append(f"{folder}: skipped {name}: {why}; read it alone with --series")
            del groups[uid], orient[uid]

    # parallel series holding the same slice positions: one is kept by the rule, the others noted
    positions = {uid: {round(float(_ipp(h.ds) @ normal), 3) for h in items} for uid, items in groups.items()}
    kept, skipped = _choose_overlapping(folder, groups, positions)
    notes += skipped
    instances = [_Instance(h.path, h.ds, uid, float(_ipp(h.ds) @ normal), _ipp(h.ds), h.frame)
                 for uid in kept for h in groups[uid]]
    instances.sort(key=lambda i: i.position)
    slices: list[list[_Instance]] = []
    for inst in instances:
        if slices and abs(inst.position - slices[-1][0].position) <= POSITION_TOL_MM:
            slices[-1].append(inst)
        else:
            slices.append([inst])
    if len(slices) < 2:
        raise InputError(f"{folder}: {_series_name(groups[ref_uid][0].ds)}: a single slice position; a short-axis "
                         "stack needs at least 2 parallel slices")
    ordered, trigger_ref, phase_notes = _order_phases(folder, slices)
    notes += phase_notes
    if len({len(g) for g in ordered}) > 1:
        ordered, trigger_ref, matched = _match_phases(folder, ordered, timed=bool(trigger_ref))
        notes += matched
    nt = len(ordered[0])
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

    array = _read_pixels(ordered, size0)
    name0 = _series_name(ordered[0][0].ds)
    if not np.isfinite(array).all():
        raise InputError(f"{folder}: {name0}: pixel values are NaN or Inf after rescale")
    if float(array.max()) == float(array.min()):
        raise InputError(f"{folder}: {name0}: image is constant (every pixel = {float(array.min()):g})")

    lps = np.eye(4)
    lps[:3, 0] = row0 * spacing0[1]  # along a row = increasing column index, spaced by the column spacing
    lps[:3, 1] = col0 * spacing0[0]
    lps[:3, 2] = (ordered[-1][0].ipp - ordered[0][0].ipp) / (len(ordered) - 1)
    lps[:3, 3] = ordered[0][0].ipp
    desc = str(getattr(ordered[0][0].ds, "SeriesDescription", "") or "")
    return DicomStack(array=array, affine=LPS_TO_RAS @ lps, datasets=[[i.ds for i in g] for g in ordered],
                      series=list(dict.fromkeys(g[0].series for g in ordered)), folder=folder, description=desc,
                      trigger_times_ms=trigger_ref, notes=notes, frames=[[i.frame for i in g] for g in ordered],
                      paths=[[i.path for i in g] for g in ordered])


def _order_phases(folder: Path, slices: list[list[_Instance]]) -> tuple[list[list[_Instance]], list[float], list[str]]:
    """Each slice's images ordered by TriggerTime, the trigger times of the first slice, and notes.

    An export without any TriggerTime (some anonymisers drop it) is ordered by InstanceNumber (the frame
    index within an enhanced file), as the scanner numbered the phases; it then gives no trigger times, so
    ED is found from the images."""
    timed = any(getattr(i.ds, "TriggerTime", None) not in (None, "") for group in slices for i in group)
    if not timed and max(len(group) for group in slices) > 1:
        return _order_by_instance_number(folder, slices)
    ordered: list[list[_Instance]] = []
    trigger_ref: list[float] = []
    for group in slices:
        name = _series_name(group[0].ds)
        times = []
        for inst in group:
            value = getattr(inst.ds, "TriggerTime", None)
            if value in (None, "") and len(group) > 1:
                raise InputError(f"{inst.path}: {name}: no TriggerTime (other images of the stack have one); "
                                 "cannot order the cardiac phases")
            times.append(float(value) if value not in (None, "") else 0.0)
        if len(set(times)) != len(times):
            raise InputError(f"{folder}: {name}: two images of the slice at {group[0].position:.1f} mm share a "
                             "TriggerTime (duplicate files or two acquisitions mixed)")
        order = np.argsort(times, kind="stable")
        ordered.append([group[i] for i in order])
        if not trigger_ref:
            trigger_ref = [times[i] for i in order]
    return ordered, trigger_ref, []


MIN_PHASE_SHARE = 0.75  # a slice with at least this share of the others' phases is matched to them


def _match_phases(folder: Path, ordered: list[list[_Instance]], timed: bool
                  ) -> tuple[list[list[_Instance]], list[float], list[str]]:
    """Slices with a few phases fewer than the others (arrhythmia rejection, a dropped image) matched to a
    slice with the most: each of its phases takes the short slice's image nearest in trigger time (one
    patient, one session: the cycles line up from the R wave), so one image may serve twice; a note names
    each. Fewer than ``MIN_PHASE_SHARE`` of the phases, or no trigger times to match by, is the error it
    always was."""
    full = max(len(g) for g in ordered)
    reference = next(g for g in ordered if len(g) == full)
    out, notes = [], []
    for group in ordered:
        if len(group) == full:
            out.append(group)
            continue
        if not timed or len(group) < max(2, MIN_PHASE_SHARE * full):
            raise InputError(f"{folder}: {_series_name(group[0].ds)}: incomplete: the slice at "
                             f"{group[0].position:.1f} mm has {len(group)} phase(s), others up to {full}")
        mine = np.asarray([float(i.ds.TriggerTime) for i in group])
        out.append([group[int(np.argmin(np.abs(mine - float(i.ds.TriggerTime))))] for i in reference])
        notes.append(f"{folder}: {_series_name(group[0].ds)}: the slice at {group[0].position:.1f} mm has "
                     f"{len(group)} phases, others {full}: matched to theirs by the nearest trigger time")
    return out, [float(i.ds.TriggerTime) for i in reference], notes


def _order_by_instance_number(folder: Path, slices: list[list[_Instance]]
                              ) -> tuple[list[list[_Instance]], list[float], list[str]]:
    """``_order_phases`` for a stack without trigger times: InstanceNumber, then the frame within a file."""
    ordered: list[list[_Instance]] = []
    for group in slices:
        name = _series_name(group[0].ds)
        keys = []
        for inst in group:
            try:
                keys.append((int(getattr(inst.ds, "InstanceNumber", None)), inst.frame or 0))
            except (TypeError, ValueError):
                raise InputError(f"{inst.path}: {name}: neither TriggerTime nor InstanceNumber; cannot order "
                                 "the cardiac phases") from None
        if len(set(keys)) != len(keys):
            raise InputError(f"{folder}: {name}: no TriggerTime, and two images of the slice at "
                             f"{group[0].position:.1f} mm share an InstanceNumber; cannot order the cardiac phases")
        ordered.append([group[i] for i in sorted(range(len(group)), key=keys.__getitem__)])
    note = (f"{folder}: {_series_name(slices[0][0].ds)}: no TriggerTime in any image: phases ordered by "
            "InstanceNumber; ED is found from the images")
    return ordered, [], [note]


def _read_pixels(ordered: list[list[_Instance]], size: tuple[int, int]) -> np.ndarray:
    """float32 (X, Y, Z, T) through the modality LUT; an enhanced file is decoded once for all its frames."""
    array = np.empty((size[1], size[0], len(ordered), len(ordered[0])), dtype=np.float32)
    cache: dict[Path, np.ndarray] = {}
    for k, group in enumerate(ordered):
        for t, inst in enumerate(group):
            name = _series_name(inst.ds)
            if inst.frame is None:
                array[:, :, k, t] = _pixels(inst.path, name, size).T
                continue
            if inst.path not in cache:
                cache = {inst.path: _decode(inst.path, name)}
            frames = cache[inst.path]
            values = frames[inst.frame - 1].astype(np.float64)
            slope, intercept = float(getattr(inst.ds, "RescaleSlope", 1) or 1), float(
                getattr(inst.ds, "RescaleIntercept", 0) or 0)
            if values.shape != size:
                raise InputError(f"{inst.path}: {name}: frame {inst.frame} is {values.shape}, header says {size}")
            array[:, :, k, t] = (values * slope + intercept).astype(np.float32).T
    return array


def _decode(path: Path, name: str) -> np.ndarray:
    """Every frame's stored values of an enhanced file, (frames, rows, cols)."""
    import pydicom

    ds = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path, force=True)
            stored = _as_monochrome2(ds.pixel_array, ds)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for broken pixel data; one line for the user
        raise _undecodable(path, name, ds, exc) from None
    return stored if stored.ndim == 3 else stored[None]


def _pixels(path: Path, name: str, size: tuple[int, int]) -> np.ndarray:
    """Stored pixels of one file through the modality LUT (slope/intercept), float32 (rows, cols)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = None
    try:
        with warnings.catch_warnings():  # header values were checked (and their warnings silenced) on reading
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path, force=True)
            stored = _as_monochrome2(ds.pixel_array, ds)
            values = apply_modality_lut(stored, ds)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for broken pixel data; one line for the user
        raise _undecodable(path, name, ds, exc) from None
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 3:
        raise InputError(f"{path}: {name}: a colour image ({getattr(ds, 'PhotometricInterpretation', '?')}); "
                         "the cine must be grayscale MR images")
    if values.shape != size:
        raise InputError(f"{path}: {name}: pixel data is {values.shape}, header says {size}")
    return values


def _as_monochrome2(stored: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values as MONOCHROME2 would hold them: a MONOCHROME1 image shows its lowest value white, so its
    values are flipped within the stored range (the same flip for every file of the series)."""
    if str(getattr(ds, "PhotometricInterpretation", "") or "").strip().upper() != "MONOCHROME1":
        return stored
    if int(getattr(ds, "PixelRepresentation", 0) or 0):  # signed: [-2^(b-1), 2^(b-1) - 1] onto itself
        return -1 - stored.astype(np.int64)
    return (2 ** int(getattr(ds, "BitsStored", 16) or 16) - 1) - stored.astype(np.int64)


def _undecodable(path: Path, name: str, ds: Any, exc: Exception) -> InputError:
    """One line for pixel data that cannot be read: pydicom's reason (each decoder's, where it tried several)
    and, for a compressed transfer syntax, its name and how to get the images uncompressed."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    reason = "; ".join(lines[1:] if len(lines) > 1 and lines[0].endswith(":") else lines)[:400]
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        return InputError(f"{path}: {name}: cannot decode pixel data ({reason})")
    return InputError(f"{path}: {name}: cannot decode its {syntax.name} pixel data ({reason}); decompress the "
                      "series first (dcmtk: dcmdjpeg IN OUT; GDCM: gdcmconv --raw IN OUT) or export it uncompressed")
