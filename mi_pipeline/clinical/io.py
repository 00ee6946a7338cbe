"""What ``predict`` adds for clinical use, kept out of the command so it can move freely.

``predict`` calls five functions here: ``find_dicom_cines`` / ``read_dicom_cine`` (DICOM series
folders as input), ``finish_report`` (RV-anchored AHA segments, the input's description and what the
DICOM reader skipped, the report's schema version), ``write_figures`` (the matplotlib QC figure and
the bull's-eye) and, last, ``add_dicom_seg`` (the DICOM SEG for DICOM input: optional, never fatal,
so it runs after the report, masks and figures are on disk). Each is a library function with no
command-line concerns.
"""

from __future__ import annotations

import json
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mi_pipeline import metrics
from mi_pipeline.clinical import aha
from mi_pipeline.data import dicom
from mi_pipeline.data.cache import RV_CODE, Subject
from mi_pipeline.errors import InputError

REPORT_SCHEMA = Path(__file__).resolve().parent / "schemas" / "report.schema.json"
SCHEMA_VERSION = 1
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@lru_cache(maxsize=1)
def report_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json`` shipped in the package."""
    return json.loads(REPORT_SCHEMA.read_text(encoding="utf-8"))


def _name(folder: Path) -> str:
    name = folder.name if folder.name.lower() not in ("cine", "dicom", "sa") else folder.parent.name
    return _SAFE.sub("_", name).strip("._-") or "subject"


def _is_nifti_cine(entry: Path) -> bool:
    """A NIfTI file that could be a cine (labels and other derived maps beside a DICOM cine are not)."""
    return entry.is_file() and entry.name.endswith((".nii.gz", ".nii")) and "_label" not in entry.name \
        and not entry.name.startswith(("lge", "infarct"))


def find_dicom_cines(path: Path) -> list[tuple[str, Path]]:
    """(subject, DICOM folder) pairs: ``path`` itself when it holds DICOM files (a DICOMDIR counts), a subject
    folder of the DICOM dataset layout (its ``cine/``), else its sub-folders that hold DICOM (or their ``cine/``
    folder). Empty when there is no DICOM (NIfTI input)."""
    path = Path(path)
    if not path.is_dir():
        return []
    if dicom.holds_dicom(path):
        return [(_name(path), path)]
    if dicom.holds_dicom(path / "cine"):  # <subject>/cine/, lge/, labels: what `phantom --dicom` writes
        return [(_name(path / "cine"), path / "cine")]
    found: list[tuple[str, Path]] = []
    nifti = False
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if _is_nifti_cine(entry):
            nifti = True
        elif entry.is_dir():
            if dicom.holds_dicom(entry):
                found.append((_name(entry), entry))
            elif dicom.holds_dicom(entry / "cine"):
                found.append((_name(entry / "cine"), entry / "cine"))
            elif (entry / "cine.nii.gz").is_file():
                nifti = True
    if found and nifti:
        raise InputError(f"{path}: holds both NIfTI cines and DICOM folders; give predict one kind per folder")
    return found


def read_dicom_cine(folder: Path, series: str | None = None) -> dicom.DicomStack:
    """The cine stack of a DICOM folder (one series, or one series per slice; ``series`` picks one by UID or
    number); what the reader skipped or chose is printed, one line each, and reported by ``finish_report``."""
    stack = dicom.read_stack(folder, what="cine", min_phases=2, series=series)
    for note in stack.notes:
        print(f"note: {note}", file=sys.stderr)
    return stack


def ed_from_trigger_times(stack: dicom.DicomStack) -> tuple[int, str] | None:
    """ED as the frame with the smallest TriggerTime (the R-wave trigger is end-diastole), and how it was found;
    None when the headers carry no trigger times."""
    times = stack.trigger_times_ms
    if len(times) < 2 or len(set(times)) < 2:
        return None
    ed = int(np.argmin(times))
    return ed, f"DICOM TriggerTime (smallest: {times[ed]:g} ms)"


def anchor_for(subject: Subject, myo: np.ndarray, rv: np.ndarray | None = None) -> aha.Anchor:
    """RV-insertion anchor: from RV labels when the subject has them (code 5 in the cache), else from the RV
    the segmentation model found (``rv``, a model that learnt it), else from the ED cine; the fixed crop-grid
    angle only when none finds one (with a warning)."""
    spacing = float(subject.spacing[0])
    masks = []
    if subject.cine_label is not None:
        masks.append((subject.cine_label[:, 0] == RV_CODE, "rv_labels"))
    if rv is not None:
        masks.append((rv, "rv_model"))
    for mask, method in masks:
        if mask.any():
            anchor = aha.anchor_from_labels(mask, myo, subject.affine, spacing, method=method)
            if anchor.method != "fixed":
                return anchor
    return aha.anchor_from_images(subject.cine[:, 0], myo, subject.affine, spacing, motion=subject.cine.std(axis=1))


def aha_section(myo: np.ndarray, inf: np.ndarray, anchor: aha.Anchor) -> dict[str, Any]:
    segments = aha.segment_map(myo, anchor)
    extents = metrics.segment_extents(segments, myo, inf)
    level_of = {s: name for name, n, first in metrics.AHA_LEVELS for s in range(first, first + n)}
    return {str(s): {"level": level_of[s], "extent_percent": (round(100 * e, 2) if e is not None else None),
                     "infarcted": (e is not None and e >= metrics.INFARCT_SEGMENT_THRESHOLD)}
            for s, e in extents.items()}


def finish_report(report: dict[str, Any], subject: Subject, raw: Any, pred: np.ndarray, seg_xyz: np.ndarray,
                  folder: Path, rv: np.ndarray | None = None) -> dict[str, Any]:
    """``build_report``'s dict completed to schema version 1 (the DICOM SEG is ``add_dicom_seg``'s, later);
    ``rv``: where the model found the RV (``anchor_for``)."""
    myo, inf = pred > 0, pred == 2
    anchor = anchor_for(subject, myo, rv)
    warnings_list: list[str] = list(report.get("warnings", []))
    if anchor.warning:
        warnings_list.append(anchor.warning)
        print(f"warning: {report['subject']}: {anchor.warning}", file=sys.stderr)
    warnings_list += anchor.notes
    report["aha_segments"] = aha_section(myo, inf, anchor)
    report["aha_anchor"] = {**anchor.to_json(), "why": aha.anchor_summary(anchor)["why"]}
    report["aha_note"] = ("segments: 6/6/4 sectors at basal/mid/apical thirds of the slices with myocardium; "
                          + ("numbered from the anterior RV insertion point (segment 2 starts there, toward the "
                             "septum)" if anchor.method != "fixed" else
                             "FIXED orientation on the crop grid, not anchored to the RV (see warnings)")
                          + "; segment 17 (apical cap) is not assessed from a short-axis stack")
    stack = raw.dicom_stack
    outputs: dict[str, Any] = {"segmentation_nifti": "infarct_seg.nii.gz", "qc_figure": "qc.png",
                               "bullseye_figure": "bullseye.png"}
    if stack is not None:
        warnings_list += stack.notes
        report["input"] = {"format": "dicom", "series_instance_uids": list(stack.series),
                           "series_description": stack.description, "shape": list(stack.array.shape)}
    else:
        report["input"] = {"format": "nifti", "shape": [int(v) for v in raw.cine.shape]}
    report["outputs"] = outputs
    report["warnings"] = warnings_list
    return {"schema_version": SCHEMA_VERSION, **report}


def write_figures(folder: Path, report: dict[str, Any], subject: Subject, fields: np.ndarray | None,
                  pred: np.ndarray, slices: list[int], uncertainty: np.ndarray | None = None) -> None:
    """``qc.png`` and ``bullseye.png`` beside the report (matplotlib, written atomically): both carry the
    report's trust line (red when the number is not to be read as a measurement) and the same AHA anchor;
    ``uncertainty`` (a k-fold ensemble's fold disagreement, crop grid) is a column of the QC figure."""
    from mi_pipeline.clinical import figures
    from mi_pipeline.clinical.trust import alarm

    levels = metrics.level_of_slices(pred > 0)
    verdict = report.get("trust")
    line, red = (verdict["line"], alarm(verdict)) if verdict else (None, False)
    fig = figures.qc_figure(report["subject"], subject.cine, subject.es, fields, pred, slices, levels,
                            infarct_percent=report["infarct_percent"], ed_frame=report["frames"]["ed"],
                            es_frame=report["frames"]["es"], spacing_mm=float(subject.spacing[0]),
                            affine=subject.affine, anchor=report["aha_anchor"], uncertainty=uncertainty,
                            trust=_wrap(line), alarm=red)
    figures.save_figure(fig, folder / "qc.png")
    extents = {int(s): v["extent_percent"] for s, v in report["aha_segments"].items()}
    anchor = report["aha_anchor"]
    label = {"rv_images": "anterior RV insertion point, found in the cine",
             "rv_labels": "anterior RV insertion point, from RV labels",
             "rv_model": "anterior RV insertion point, from the RV the model found",
             "fixed": "FIXED crop-grid angle (RV insertion not found; numbering may be wrong)"}[anchor["method"]]
    fig = figures.bullseye_figure(report["subject"], extents, anchor=label, infarct_percent=report["infarct_percent"],
                                  trust=_wrap(line, 70), alarm=red)
    figures.save_figure(fig, folder / "bullseye.png")


def _wrap(line: str | None, width: int = 110) -> str | None:
    import textwrap

    return "\n".join(textwrap.wrap(line, width)) if line else None


def add_dicom_seg(report: dict[str, Any], raw: Any, seg_xyz: np.ndarray, folder: Path) -> dict[str, Any]:
    """The DICOM SEG for a DICOM cine, written after everything else; ``report.json`` rewritten with its name,
    or with the warning that says why there is none. Never raises for what the source headers hold."""
    from mi_pipeline.clinical.dicom_seg import write_seg
    from mi_pipeline.fsio import atomic_write_text

    if raw.dicom_stack is None:
        return report
    result = write_seg(raw.dicom_stack, seg_xyz, int(raw.ed), folder, trust=report.get("trust", {}).get("label", ""))
    report["outputs"]["dicom_seg"] = [p.name for p in result.paths]
    report["warnings"] = list(report["warnings"]) + result.notes + ([result.warning] if result.warning else [])
    if result.warning:
        print(f"warning: {report['subject']}: {result.warning}", file=sys.stderr)
    atomic_write_text(folder / "report.json", json.dumps(report, indent=1) + "\n")
    return report
