"""Write a NIfTI-ordered image (X, Y, Z[, T]) with a RAS affine as classic MR DICOM series.

Why: the DICOM reader must be tested on real DICOM files whose truth is known, and the phantom is
the only data with truth; this turns a phantom subject into what a scanner would send (one series,
or one series per slice), with a rescale slope/intercept so the modality LUT is exercised. It is the
exact inverse of ``data.dicom.read_stack``'s conventions (``pixels = array[:, :, k, t].T``, LPS).

The images are a conformant MR Image IOD (a cardiac-gated 2D gradient-echo cine: the MR Image module's
Type 1 and 2 attributes, patient position, frame of reference), so an independent validator
(dciodvfy) finds no errors. UIDs are derived from what the image is (seed, subject, a digest of the
data, series, layout, slice and phase) and never from the patient id alone: two exports share a
SOPInstanceUID only when they hold the same image, and the same export written twice is
byte-identical.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mi_pipeline.fsio import atomic_path

if TYPE_CHECKING:
    from mi_pipeline.data.phantom import PhantomSubject

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _uid(prefix_seed: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[prefix_seed]))


def data_key(*arrays: np.ndarray) -> str:
    """A short digest of arrays (values, shape, dtype): what makes two subjects' UIDs differ."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def _mr_acquisition(ds: object) -> None:
    """The MR Image module's Type 1/2 attributes for a cardiac-gated 2D gradient-echo (bSSFP-like) cine."""
    ds.ScanningSequence, ds.SequenceVariant = "GR", ["SS", "SK"]  # type: ignore[attr-defined]
    ds.ScanOptions, ds.MRAcquisitionType = "CG", "2D"  # type: ignore[attr-defined]
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "3.0", "1.5", 1  # type: ignore[attr-defined]
    ds.MagneticFieldStrength, ds.ImagedNucleus = "1.5", "1H"  # type: ignore[attr-defined]
    ds.PatientPosition, ds.BodyPartExamined = "HFS", "HEART"  # type: ignore[attr-defined]
    ds.PositionReferenceIndicator = ""  # type: ignore[attr-defined]


def write_series(array: np.ndarray, affine: np.ndarray, folder: str | os.PathLike[str], *, patient_id: str,
                 study_uid: str | None = None, frame_of_reference_uid: str | None = None, description: str = "cine SA",
                 series_number: int = 1, frame_ms: float = 40.0, slope: float = 1.0, intercept: float = 0.0,
                 per_slice_series: bool = False, uid_key: str | None = None) -> list[str]:
    """Write ``array`` (X, Y, Z) or (X, Y, Z, T) of integer values; returns the SeriesInstanceUIDs written.

    Stored value = (value - intercept) / slope, which must be an integer in 0..65535 (checked), so the
    reader's rescale gives back ``array`` exactly. ``uid_key`` (e.g. seed and subject) enters every UID;
    a digest of the data and affine always does.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = np.asarray(array)
    if data.ndim == 3:
        data = data[..., None]
    stored = (data.astype(np.float64) - intercept) / slope
    if not np.allclose(stored, np.round(stored)) or stored.min() < 0 or stored.max() > 65535:
        raise ValueError("values do not map to uint16 stored values with this slope/intercept")
    stored = np.round(stored).astype(np.uint16)
    nx, ny, nz, nt = data.shape
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    sx, sy, sz = (float(np.linalg.norm(lps[:3, i])) for i in range(3))
    row_cos, col_cos = lps[:3, 0] / sx, lps[:3, 1] / sy
    key = f"{uid_key or ''}-{patient_id}-{data_key(stored, np.asarray(affine, dtype=np.float64))}"
    study_uid = study_uid or _uid(f"study-{key}")
    for_uid = frame_of_reference_uid or _uid(f"for-{key}")
    layout = "per-slice" if per_slice_series else "one-series"
    series_uids = [_uid(f"series-{key}-{layout}-{description}-{series_number}-{k}")
                   for k in range(nz if per_slice_series else 1)]
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    instance = 0
    for k in range(nz):
        ipp = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
        series_uid = series_uids[k if per_slice_series else 0]
        for t in range(nt):
            instance += 1
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            sop_uid = _uid(f"sop-{series_uid}-slice{k}-phase{t}")
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, sop_uid
            ds.PatientName, ds.PatientID = f"{patient_id}^phantom", patient_id
            ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
            ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.Modality, ds.Manufacturer = "MR", "mi_pipeline phantom"
            ds.SeriesDescription = description + (f" slice {k + 1}" if per_slice_series else "")
            ds.SeriesNumber = series_number + (k if per_slice_series else 0)
            ds.InstanceNumber = instance
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            _mr_acquisition(ds)
            ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
            ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cos, *col_cos)]
            ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # (between rows, between columns)
            ds.SliceThickness = f"{sz:.6f}"
            ds.SliceLocation = f"{float(ipp @ np.cross(row_cos, col_cos)):.6f}"
            if nt > 1:  # a cine: gated, one image per trigger delay
                ds.TriggerTime = f"{t * frame_ms:.3f}"
                ds.CardiacNumberOfImages = nt
            else:
                ds.ScanOptions = ""
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = ny, nx
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            if (slope, intercept) != (1.0, 0.0):  # a modality LUT only when it is not the identity
                ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
            ds.PixelData = np.ascontiguousarray(stored[:, :, k, t].T).tobytes()
            with atomic_path(folder / f"IM_{instance:05d}.dcm") as tmp:
                pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return series_uids


def write_subject_dicom(subject: PhantomSubject, directory: str | os.PathLike[str], *, per_slice_series: bool = False,
                        seed: int | None = None) -> None:
    """A phantom subject in the DICOM dataset layout (``data.format: dicom``): ``cine/`` and ``lge/`` as DICOM
    series of one study, labels and ``info.yaml`` as the generic layout writes them. ``seed`` (the phantom's)
    enters every UID with the subject and a digest of its images."""
    import yaml

    from mi_pipeline.data.phantom import _nifti

    directory = Path(directory)
    s = subject
    key = f"seed{seed}-{s.id}-{data_key(s.cine, s.lge)}"
    study, frame_ref = _uid(f"study-{key}"), _uid(f"for-{key}")
    write_series(s.cine, s.cine_affine, directory / "cine", patient_id=s.id, study_uid=study,
                 frame_of_reference_uid=frame_ref, description="cine SA", series_number=1, frame_ms=s.frame_ms,
                 slope=0.5, intercept=-100.0, per_slice_series=per_slice_series, uid_key=key)
    write_series(s.lge, s.lge_affine, directory / "lge", patient_id=s.id, study_uid=study,
                 frame_of_reference_uid=frame_ref, description="LGE SA", series_number=100, uid_key=key)
    zc = tuple(float(v) for v in np.linalg.norm(s.cine_affine[:3, :3], axis=0))
    zl = tuple(float(v) for v in np.linalg.norm(s.lge_affine[:3, :3], axis=0))
    for name, data, affine, zooms in (("lge_label.nii.gz", s.lge_label, s.lge_affine, zl),
                                      ("cine_label.nii.gz", s.cine_label, s.cine_affine, zc + (s.frame_ms,))):
        if data is None:  # a phantom written without cine labels (cine_labels: false)
            continue
        with atomic_path(directory / name) as tmp:
            target = Path(str(tmp) + ".nii.gz")
            _nifti(data, affine, zooms).to_filename(str(target))
            target.replace(tmp)
    with atomic_path(directory / "info.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(s.info, sort_keys=False))
