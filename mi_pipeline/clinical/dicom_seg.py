"""The predicted segmentation as DICOM SEG (highdicom), referencing the cine it came from.

Why: a cardiologist reads images in a PACS viewer. A DICOM Segmentation object that references the
source cine's instances (same study, same frame of reference) opens as an overlay beside the images,
where a NIfTI file would not open at all. The segmentation is of the ED phase, so it references the
ED image of every slice.

DICOM SEG requires all its source images to come from one series. A stack written as one series per
slice (a common scanner layout) therefore gets one SEG per source series, numbered in slice order.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from mi_pipeline.data.dicom import DicomStack
from mi_pipeline.errors import InputError
from mi_pipeline.fsio import atomic_write_bytes

SEG_NAME = "infarct_seg.dcm"
_MYOCARDIUM = ("74281007", "SCT", "Myocardium structure")
_INFARCT = ("55641003", "SCT", "Infarct")


def _descriptions() -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = hd.AlgorithmIdentificationSequence(name="mi_pipeline", version="0.1.0", family=codes.DCM.ArtificialIntelligence)
    out = []
    for number, (label, concept, category) in enumerate(
            (("viable myocardium", _MYOCARDIUM, codes.SCT.Tissue),
             ("infarct", _INFARCT, codes.SCT.MorphologicallyAbnormalStructure)), start=1):
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=category,
            segmented_property_type=hd.sr.CodedConcept(*concept),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo))
    return out


def _segmentation(**kwargs):
    """highdicom's Segmentation, without its UserWarnings about the source's name formats (not actionable here)."""
    import highdicom as hd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return hd.seg.Segmentation(**kwargs)


def write_seg(stack: DicomStack, seg_xyz: np.ndarray, ed_phase: int, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``folder/infarct_seg.dcm`` (or ``infarct_seg_<n>.dcm`` per source series); returns the paths.

    ``seg_xyz`` uint8 (X, Y, Z) on the cine grid: 0 background, 1 myocardium, 2 infarct.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    folder = Path(folder)
    by_series: dict[str, list[int]] = {}
    for k in range(len(stack.datasets)):
        by_series.setdefault(str(stack.datasets[k][ed_phase].SeriesInstanceUID), []).append(k)
    written = []
    descriptions = _descriptions()
    for n, (series_uid, ks) in enumerate(by_series.items(), start=1):
        sources = [stack.datasets[k][ed_phase] for k in ks]
        labels = np.stack([seg_xyz[:, :, k].T for k in ks]).astype(np.uint8)  # (frames, rows, cols)
        try:
            seg = _segmentation(
                source_images=sources, pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=900 + n,
                sop_instance_uid=generate_uid(), instance_number=1, manufacturer="mi_pipeline",
                manufacturer_model_name="mi_pipeline predict", software_versions="0.1.0",
                device_serial_number="0", series_description="MI prediction (ED): myocardium, infarct",
                omit_empty_frames=False)
        except (ValueError, TypeError, AttributeError) as exc:
            raise InputError(f"{stack.folder}: cannot build a DICOM SEG for series {series_uid} "
                             f"({str(exc).splitlines()[0][:160]})") from None
        buffer = io.BytesIO()
        seg.save_as(buffer)
        name = SEG_NAME if len(by_series) == 1 else f"infarct_seg_{n:03d}.dcm"
        atomic_write_bytes(folder / name, buffer.getvalue())
        written.append(folder / name)
    return written
