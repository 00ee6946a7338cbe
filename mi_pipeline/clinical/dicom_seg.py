"""The predicted segmentation as one DICOM SEG (highdicom), referencing the cine it came from.

Why: a cardiologist reads images in a PACS viewer. A DICOM Segmentation object that references the
source cine's instances (same study, same frame of reference) opens as an overlay beside the images,
where a NIfTI file would not open at all. The segmentation is of the ED phase, so it references the
ED image of every slice.

What real exports need, and what this module does about it:

* a SEG's geometry comes from one series; a cine written as one series per slice gets ONE SEG all
  the same: the first slice's ED image is the source, the other slices' ED images are
  ``further_source_images``, and every frame's position is given explicitly (``plane_positions``);
* an enhanced multi-frame cine is the single source, with the ED frames' positions given;
* anonymisers leave dates a DICOM writer refuses (``00000000``, ``20120000``) or remove Type 2
  attributes (PatientBirthDate); the SEG is built from copies in which such values are empty (the
  source files are never touched), and each change is named in a note;
* one FrameOfReferenceUID per file (seen in public exports) is replaced, in the copies, by the
  first slice's when the reader has already proved the slices one stack (parallel, evenly spaced);
* anything else that stops highdicom becomes a warning line saying why; the SEG is optional, the
  report, masks and figures are already on disk when this runs.

The segments carry recommended display colours equal to the QC figure's overlay colours, and the
series and content descriptions mark the object as research use, not for diagnosis.
"""

from __future__ import annotations

import copy
import datetime
import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mi_pipeline.data.dicom import DicomStack
from mi_pipeline.fsio import atomic_write_bytes

SEG_NAME = "infarct_seg.dcm"
RESEARCH_USE = "RESEARCH USE ONLY - not for diagnosis"
_MYOCARDIUM = ("74281007", "SCT", "Myocardium structure")
_INFARCT = ("55641003", "SCT", "Infarct")
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass
class SegResult:
    """What ``write_seg`` did: the files written (none when skipped), notes on sanitised copies, and the
    warning saying why no SEG was written."""

    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warning: str | None = None


def _descriptions() -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from mi_pipeline.clinical.figures import INFARCT_COLOUR, MYO_COLOUR

    algo = hd.AlgorithmIdentificationSequence(name="mi_pipeline", version="0.1.0", family=codes.DCM.ArtificialIntelligence)
    out = []
    for number, (label, concept, category, colour) in enumerate(
            (("viable myocardium", _MYOCARDIUM, codes.SCT.Tissue, MYO_COLOUR),
             ("infarct", _INFARCT, codes.SCT.MorphologicallyAbnormalStructure, INFARCT_COLOUR)), start=1):
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=category,
            segmented_property_type=hd.sr.CodedConcept(*concept),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
            display_color=hd.color.CIELabColor.from_string(colour)))
    return out


def _valid(vr: str, value: str) -> bool:
    """Whether a DA / TM value is a real date / time (``00000000`` and ``20120000`` are not)."""
    text = value.strip()
    if not text:
        return True
    try:
        if vr == "DA":
            datetime.datetime.strptime(text, "%Y%m%d")
        else:
            hh, mm, ss = int(text[0:2]), int(text[2:4] or 0), float(text[4:] or 0)
            return 0 <= hh < 24 and 0 <= mm < 60 and 0 <= ss < 61
    except ValueError:
        return False
    return True


_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _valid_uid(value: str) -> bool:
    """A UID as DICOM defines it: dot-separated numbers without leading zeros, at most 64 characters."""
    return bool(value) and len(value) <= 64 and _UID.fullmatch(value) is not None


def sanitised_copy(ds: Any) -> tuple[Any, list[str]]:
    """A copy of a source header that a DICOM writer accepts: invalid dates/times emptied, missing Type 2
    patient/study attributes present and empty; the keywords changed, for one note."""
    out = copy.deepcopy(ds)
    changed = []
    for element in out:
        if (element.VR in ("DA", "TM") and element.VM == 1 and element.value not in (None, "")
                and not _valid(element.VR, str(element.value))):
            changed.append(f"{element.keyword}={element.value!s} emptied")
            element.value = ""
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in out:
            setattr(out, keyword, "")
            changed.append(f"{keyword} absent, added empty")
    return out, changed


def _sources(stack: DicomStack, ed_phase: int) -> tuple[list[Any], list[str]]:
    """Sanitised copies of the ED images (the enhanced file's header once, for an enhanced cine)."""
    import pydicom

    if stack.frames and stack.frames[0][ed_phase] is not None:
        headers = [pydicom.dcmread(stack.paths[0][ed_phase], stop_before_pixels=True, force=True)]
    else:
        headers = [stack.datasets[k][ed_phase] for k in range(len(stack.datasets))]
    copies: list[Any] = []
    changes: list[str] = []
    for ds in headers:
        clean, changed = sanitised_copy(ds)
        copies.append(clean)
        changes += [c for c in changed if c not in changes]
    notes = [f"DICOM SEG built from copies of the source headers: {', '.join(changes)}"] if changes else []
    bad = sorted({keyword for ds in copies for keyword in _UID_KEYWORDS if not _valid_uid(str(ds.get(keyword, "")))})
    if bad:
        notes.append(f"DICOM SEG: the source's {', '.join(bad)} are not valid DICOM UIDs (e.g. leading zeros in a "
                     "component); the SEG references them unchanged, so it attaches to these images but a strict "
                     "validator reports the same values in it")
    frames_of_ref = {str(getattr(ds, "FrameOfReferenceUID", "")) for ds in copies}
    if len(frames_of_ref) > 1:
        first = str(getattr(copies[0], "FrameOfReferenceUID", ""))
        for ds in copies:
            ds.FrameOfReferenceUID = first
        notes.append(f"DICOM SEG: the {len(copies)} source images carry {len(frames_of_ref)} frames of reference; "
                     "the reader found them one parallel, evenly spaced stack, so the SEG uses the first slice's")
    return copies, notes


def _plane_positions(stack: DicomStack, ed_phase: int) -> list[Any]:
    import highdicom as hd

    return [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                     [float(v) for v in stack.datasets[k][ed_phase].ImagePositionPatient])
            for k in range(len(stack.datasets))]


def build_seg(stack: DicomStack, seg_xyz: np.ndarray, ed_phase: int, trust: str = "") -> tuple[Any, list[str]]:
    """The SEG dataset (highdicom) and the notes on how the sources were adapted; raises what highdicom raises.

    ``trust`` (the report's short verdict, e.g. "phantom-trained: not a measurement") goes into the series
    description, so a PACS list shows how far to trust the mask beside it."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    sources, notes = _sources(stack, ed_phase)
    labels = np.stack([seg_xyz[:, :, k].T for k in range(seg_xyz.shape[2])]).astype(np.uint8)  # (frames, rows, cols)
    one_series = len({str(ds.SeriesInstanceUID) for ds in sources}) == 1 and len(sources) == labels.shape[0]
    placement: dict[str, Any] = {"source_images": sources}
    if not one_series:  # one series per slice, or an enhanced source: positions given, other slices referenced
        placement = {"source_images": sources[:1], "further_source_images": sources[1:] or None,
                     "plane_positions": _plane_positions(stack, ed_phase)}
    with warnings.catch_warnings():  # highdicom's UserWarnings about name formats are not actionable here
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_descriptions(), series_instance_uid=generate_uid(), series_number=900,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="mi_pipeline",
            manufacturer_model_name="mi_pipeline predict", software_versions="0.1.0", device_serial_number="0",
            series_description=f"MI prediction (ED), research use{': ' + trust if trust else ''}"[:64], content_label="MI_SEG",
            content_description=RESEARCH_USE, omit_empty_frames=False, **placement)
    return seg, notes


def write_seg(stack: DicomStack, seg_xyz: np.ndarray, ed_phase: int, folder: str | os.PathLike[str],
              trust: str = "") -> SegResult:
    """Write ``folder/infarct_seg.dcm``; never raises for what the source holds (the warning says why instead).

    ``seg_xyz`` uint8 (X, Y, Z) on the cine grid: 0 background, 1 myocardium, 2 infarct.
    """
    try:
        with warnings.catch_warnings():  # pydicom's value warnings on the source's values: the notes say what matters
            warnings.simplefilter("ignore", UserWarning)
            seg, notes = build_seg(stack, seg_xyz, ed_phase, trust)
            buffer = io.BytesIO()
            seg.save_as(buffer)
    except Exception as exc:  # noqa: BLE001 - the SEG is optional; any library failure becomes the warning
        text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return SegResult(warning=f"DICOM SEG not written: the source headers do not allow it ({text}); "
                                 "the report, NIfTI mask and figures are complete")
    path = Path(folder) / SEG_NAME
    atomic_write_bytes(path, buffer.getvalue())
    return SegResult(paths=[path], notes=notes)
