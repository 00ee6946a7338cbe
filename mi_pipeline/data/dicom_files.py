"""Which files of a folder are the images of a cine, as scanners, PACS exports, anonymisers and CD/DVD media send them.

Why a module of its own: before any geometry is read (``data.dicom``), a folder as it arrives has to
be sorted into "images we can place" and "everything else", and the everything-else must never fail
the whole folder:

* a ``DICOMDIR`` (media directory) is followed: the files it references are read, wherever they are
  below it (a CD root keeps its images in sub-folders); the directory object itself is no image;
* files without the 128-byte preamble are read too (``force=True``), and kept only when the result
  really is DICOM (it names its SOP class and instance);
* objects without pixels or without a place in patient space (structured reports, presentation
  states, key-object selections, ...) are skipped with a note;
* an enhanced (multi-frame) MR image is kept as one file; ``data.dicom`` reads its frames through the
  per-frame functional groups;
* a second file with the SOPInstanceUID of one already read (a copy) is skipped;
* labels, info files and figures beside the images (``.nii.gz``, ``.yaml``, ``.png``, ...) are not
  opened at all.

Every skip becomes one line in ``Found.notes`` that names how many files and why; the caller prints
the notes and puts them into the report.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
NOT_DICOM_SUFFIXES = (".nii", ".nii.gz", ".yaml", ".yml", ".json", ".png", ".jpg", ".jpeg", ".txt", ".csv",
                      ".md", ".xml", ".html", ".pdf", ".zip", ".gz", ".py", ".log", ".mat", ".npy", ".npz")
_SOP_NAMES = {
    "1.2.840.10008.5.1.4.1.1.88": "structured report",
    "1.2.840.10008.5.1.4.1.1.11": "presentation state",
    "1.2.840.10008.5.1.4.1.1.88.59": "key object selection",
    "1.2.840.10008.5.1.4.1.1.66": "segmentation/registration",
    "1.2.840.10008.5.1.4.1.1.104": "encapsulated document",
}


@dataclass
class Found:
    """The DICOM image headers of a folder (no pixels read) and what was skipped, one line per reason."""

    headers: list[tuple[Path, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _plain_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files directly in ``folder`` that are not obviously something else."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.is_file() and not p.name.lower().endswith(NOT_DICOM_SUFFIXES))


def read_header(path: Path) -> Any | None:
    """The header of ``path`` (no pixels) when it is DICOM, with or without the preamble; None otherwise.

    Every value is decoded here, once, with pydicom's value warnings silenced: real exports carry values
    its checks flag (anonymised dates ``00000000``, UIDs with leading zeros) that are read as they are;
    what matters for our output is reported where it matters (``clinical.dicom_seg``'s notes).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except InvalidDicomError:  # no "DICM" preamble: many older exports and some anonymisers
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            uid = ds.get("SOPClassUID") or (
                ds.file_meta.get("MediaStorageSOPClassUID") if getattr(ds, "file_meta", None) is not None else None)
            if not (uid and "." in str(uid)):
                return None
            ds.walk(lambda _ds, _elem: None)  # decode every value now, nested ones included
            return ds
        except Exception:  # noqa: BLE001 - a file that does not parse as DICOM is simply not DICOM here
            return None


def _sop_class(ds: Any) -> str:
    uid = ds.get("SOPClassUID")
    if uid is None and getattr(ds, "file_meta", None) is not None:
        uid = ds.file_meta.get("MediaStorageSOPClassUID")
    return str(uid or "")


def is_directory_object(ds: Any) -> bool:
    return _sop_class(ds) == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds


def _referenced_files(dicomdir: Path, ds: Any) -> list[Path]:
    """Files a DICOMDIR references (ReferencedFileID, relative to its folder), those that exist."""
    out = []
    for record in ds.get("DirectoryRecordSequence", []):
        parts = record.get("ReferencedFileID")
        if not parts:
            continue
        parts = [parts] if isinstance(parts, str) else list(parts)
        path = _resolve(dicomdir.parent, [str(p) for p in parts])
        if path is not None:
            out.append(path)
    return out


def _resolve(base: Path, parts: list[str]) -> Path | None:
    """``base/parts...`` matched case-insensitively (ISO 9660 media are upper case, copies often are not)."""
    path = base
    for part in parts:
        direct = path / part
        if direct.exists():
            path = direct
            continue
        if not path.is_dir():
            return None
        match = next((p for p in path.iterdir() if p.name.lower() == part.lower()), None)
        if match is None:
            return None
        path = match
    return path if path.is_file() else None


def _skip_reason(ds: Any) -> str | None:
    """Why a DICOM object is not an image of a stack (None when it is one)."""
    sop = _sop_class(ds)
    for prefix, name in sorted(_SOP_NAMES.items(), key=lambda item: -len(item[0])):  # the most specific first
        if sop == prefix or sop.startswith(prefix + "."):
            return f"no image ({name})"
    if "Rows" not in ds or "Columns" not in ds:
        return f"no image (SOP class {sop or 'unknown'})"
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return None  # enhanced multi-frame: its geometry is in the functional groups
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        return f"an image without a place in patient space (SOP class {sop or 'unknown'}, modality " \
               f"{ds.get('Modality', '?')})"
    return None


def find_images(folder: str | os.PathLike[str]) -> Found:
    """The image headers of ``folder`` (a DICOMDIR in it followed) and one note per reason a file was skipped."""
    folder = Path(folder)
    found = Found()
    files, seen = _plain_files(folder), set()
    skipped: Counter[str] = Counter()
    instances: set[str] = set()  # SOPInstanceUIDs read
    queue = list(files)
    while queue:
        path = queue.pop(0)
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        ds = read_header(path)
        if ds is None:
            skipped["not DICOM"] += 1
            continue
        if is_directory_object(ds):
            referenced = _referenced_files(path, ds)
            found.notes.append(f"{path}: DICOMDIR followed ({len(referenced)} file(s) referenced)")
            queue.extend(referenced)
            continue
        reason = _skip_reason(ds)
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if not reason and sop and sop in instances:
            reason = "a copy of another file (the same SOPInstanceUID)"
        if reason:
            skipped[reason] += 1
            continue
        instances.add(sop)
        found.headers.append((path, ds))
    for reason, count in sorted(skipped.items()):
        found.notes.append(f"{folder}: skipped {count} file(s): {reason}")
    return found


def holds_dicom(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds any DICOM file directly (a DICOMDIR counts): stops at the first."""
    return any(read_header(p) is not None for p in _plain_files(Path(folder)))
