"""DICOM folders as hospitals, anonymisers and CD/DVD media send them, built from our own phantom export:
each is read, its report written, and its one DICOM SEG written (valid for dciodvfy, pixels equal to the
NIfTI mask) or a warning saying why not. Also: our export's UIDs and its validity as an MR Image IOD.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from mi_pipeline.cli import predict
from mi_pipeline.cli.common import run_main
from mi_pipeline.config import PhantomConfig, load_config
from mi_pipeline.data.dicom import read_stack
from mi_pipeline.data.dicom_export import write_series, write_subject_dicom
from mi_pipeline.data.phantom import generate_subject
from tests.data.dicom_checks import (
    assert_seg_equals_mask,
    assert_valid,
    dciodvfy,
    require_validators,
)
from tests.test_inference import TINY, save_untrained

PARAMS = PhantomConfig(subjects=1, seed=77, size=64, slices=4, frames=8)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained run and one phantom subject in the DICOM dataset layout (cine/, lge/, labels)."""
    tmp = tmp_path_factory.mktemp("layouts")
    save_untrained(load_config(TINY), tmp / "run" / "checkpoints")
    write_subject_dicom(generate_subject(PARAMS, 0), tmp / "p1", seed=PARAMS.seed)
    return tmp


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _rewrite(folder: Path, change) -> None:
    for i, f in enumerate(_files(folder)):
        ds = pydicom.dcmread(f)
        change(ds, i)
        ds.save_as(f)


def _require_dcmtk(tool: str) -> None:
    require_validators()  # dcmtk is installed with dcmdump: under CI=true a missing one fails there
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} (dcmtk) not installed")


def _dicomdir(cine: Path, dest: Path) -> Path:
    """A CD root: DICOMDIR made by dcmtk's dcmmkdir, the images under DICOM/ with ISO 9660 names."""
    _require_dcmtk("dcmmkdir")
    (dest / "DICOM").mkdir(parents=True)
    for i, f in enumerate(_files(cine)):
        shutil.copy(f, dest / "DICOM" / f"IM{i:06d}")
    run = subprocess.run(["dcmmkdir", "--recurse", "--output-file", "DICOMDIR", "DICOM"], cwd=dest, check=False,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and (dest / "DICOMDIR").is_file(), run.stderr
    return dest


def _sr(path: Path, like: Path) -> None:
    """A basic text structured report of the same study (no pixels, no geometry)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    src = pydicom.dcmread(like, stop_before_pixels=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = src.StudyInstanceUID, generate_uid(), "SR"
    ds.PatientID, ds.ValueType = src.PatientID, "CONTAINER"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _enhanced(cine: Path, dest: Path) -> None:
    import highdicom as hd

    sources = [pydicom.dcmread(f) for f in _files(cine)]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(sources, series_instance_uid=hd.UID(), series_number=5,
                                                         sop_instance_uid=hd.UID(), instance_number=1)
    dest.mkdir(parents=True)
    enhanced.save_as(dest / "ENHANCED.dcm")


# compressed transfer syntaxes as PACS and CD exports write them, each made by an independent encoder:
# dcmtk's command-line tools, and GDCM (the decoder pydicom uses for JPEG Lossless) for JPEG 2000
DCMTK_ENCODERS = {"jpeg_lossless": ["dcmcjpeg", "--encode-lossless-sv1"], "jpeg_ls": ["dcmcjpls"],
                  "rle_lossless": ["dcmcrle"], "jpeg_12bit_extended": ["dcmcjpeg", "--encode-extended"]}
COMPRESSED = ("jpeg_lossless", "jpeg_ls", "rle_lossless", "jpeg2000")


def _jpeg2000(source: Path, dest: Path) -> None:
    """``source`` with its pixels encoded by GDCM as lossless JPEG 2000; the rest of the file as it was
    (GDCM's own writer would turn the MR image into an enhanced one)."""
    import gdcm
    from pydicom.uid import JPEG2000Lossless

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEG2000Lossless))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dest))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    encoded = pydicom.dcmread(dest)["PixelData"]
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds["PixelData"] = encoded  # the encapsulated fragments, as GDCM wrote them
    ds.save_as(dest, enforce_file_format=True)


def _compressed(cine: Path, dest: Path, kind: str) -> Path:
    """The cine series re-encoded in ``kind``'s transfer syntax, file by file."""
    dest.mkdir(parents=True)
    for f in _files(cine):
        if kind == "jpeg2000":
            _jpeg2000(f, dest / f.name)
            continue
        command = DCMTK_ENCODERS[kind]
        _require_dcmtk(command[0])
        run = subprocess.run([*command, str(f), str(dest / f.name)], check=False, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
    return dest


def _monochrome1(ds, i) -> None:
    """The same image as a writer that stores the lowest value as white would write it."""
    bits = int(ds.BitsStored)
    ds.PixelData = ((2**bits - 1) - ds.pixel_array).astype(ds.pixel_array.dtype).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"


def _no_preamble(folder: Path) -> None:
    for f in _files(folder):
        f.write_bytes(f.read_bytes()[132:])  # without the 128-byte preamble and "DICM"


def build(kind: str, base: Path, dest: Path) -> tuple[Path, list[str]]:
    """The folder to give ``predict --dicom`` for ``kind``, and extra arguments."""
    cine = base / "p1" / "cine"
    if kind == "phantom_subject_folder":  # what `phantom --dicom` writes: cine/, lge/, labels, info.yaml
        return base / "p1", []
    if kind == "per_slice":
        write_subject_dicom(generate_subject(PARAMS, 0), dest / "subject", per_slice_series=True, seed=PARAMS.seed)
        return dest / "subject" / "cine", []
    if kind == "dicomdir_cd_root":
        return _dicomdir(cine, dest / "cd"), []
    if kind == "dicomdir_beside_images":  # the DICOMDIR and the images it references in one folder: each read once
        _require_dcmtk("dcmmkdir")
        folder = dest / "flat"
        folder.mkdir()
        names = []
        for i, f in enumerate(_files(cine)):
            shutil.copy(f, folder / f"IM{i:06d}")
            names.append(f"IM{i:06d}")
        run = subprocess.run(["dcmmkdir", "--output-file", "DICOMDIR", *names], cwd=folder, check=False,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return folder, []
    if kind == "enhanced_mr":
        _enhanced(cine, dest / "enh")
        return dest / "enh", []
    if kind in COMPRESSED:
        return _compressed(cine, dest / kind, kind), []
    folder = dest / "p1"
    shutil.copytree(cine, folder)
    if kind == "sr_beside":
        _sr(folder / "SR00001.dcm", _files(folder)[0])
    elif kind == "anonymised_dates":
        def dates(ds, i):
            ds.PatientBirthDate = "00000000"
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20120000"
        _rewrite(folder, dates)
    elif kind == "birthdate_absent":
        _rewrite(folder, lambda ds, i: delattr(ds, "PatientBirthDate"))
    elif kind == "frame_of_reference_per_file":
        _rewrite(folder, lambda ds, i: setattr(ds, "FrameOfReferenceUID", pydicom.uid.generate_uid()))
    elif kind == "leading_zero_uids":  # as in public exports: UIDs with a leading zero in a component
        def zeros(ds, i):
            ds.StudyInstanceUID = "2.16.124.113543.6006.99.0898"
            ds.SeriesInstanceUID = "2.16.124.113543.6006.99.0897"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.16.124.113543.6006.99.07{i}"
        _rewrite(folder, zeros)
    elif kind == "no_preamble":
        _no_preamble(folder)
    elif kind == "slice_short_a_phase":  # one image of one slice missing (arrhythmia rejection, a dropped file)
        first = pydicom.dcmread(_files(folder)[0], stop_before_pixels=True)
        same = [f for f in _files(folder) if pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient
                == first.ImagePositionPatient]
        max(same, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).TriggerTime)).unlink()
    elif kind == "no_trigger_time":
        _rewrite(folder, lambda ds, i: delattr(ds, "TriggerTime"))
    elif kind == "monochrome1":
        _rewrite(folder, _monochrome1)
    elif kind in ("long_axis_beside", "localizer_beside"):  # a whole study exported into one folder
        s = generate_subject(PARAMS, 0)
        affine = s.cine_affine.copy()
        if kind == "long_axis_beside":  # a 4-chamber-like plane: same matrix, orthogonal to the stack
            affine[:3, :3] = affine[:3, [0, 2, 1]]
        write_series(np.repeat(s.cine[:, :, :1, :], 2, axis=2), affine, dest / "x", patient_id="p1", frame_ms=s.frame_ms,
                     series_number=50, description="cine" if kind == "long_axis_beside" else "localizer")
        for f in _files(dest / "x"):
            shutil.copy(f, folder / f"X_{f.name}")
    elif kind in ("two_series", "two_series_chosen"):
        s = generate_subject(PARAMS, 0)
        write_series(s.cine, s.cine_affine, dest / "b", patient_id="p1", series_number=7, frame_ms=s.frame_ms,
                     description="cine SA repeat", study_uid=str(pydicom.dcmread(_files(folder)[0]).StudyInstanceUID))
        for f in _files(dest / "b"):
            shutil.copy(f, folder / f"B_{f.name}")
        return folder, (["--series", "1"] if kind == "two_series_chosen" else [])
    return folder, []


KINDS = ("one_series", "per_slice", "phantom_subject_folder", "dicomdir_cd_root", "dicomdir_beside_images",
         "sr_beside", "enhanced_mr", "anonymised_dates", "birthdate_absent", "frame_of_reference_per_file",
         "leading_zero_uids", "no_preamble", "two_series", "two_series_chosen", "long_axis_beside", "localizer_beside",
         "no_trigger_time", "monochrome1", "slice_short_a_phase", *COMPRESSED)
EXPECTED_NOTE = {"sr_beside": "skipped 1 file(s): no image (structured report)", "dicomdir_cd_root": "DICOMDIR followed",
                 "anonymised_dates": "PatientBirthDate=00000000 emptied", "birthdate_absent": "PatientBirthDate absent",
                 "frame_of_reference_per_file": "frames of reference", "two_series": "highest SeriesNumber",
                 "two_series_chosen": "--series 1: kept series 1", "leading_zero_uids": "are not valid DICOM UIDs",
                 "long_axis_beside": "not parallel to the short-axis stack",
                 "localizer_beside": "a long-axis or localiser view ('localizer' in its description)",
                 "no_trigger_time": "no TriggerTime in any image: phases ordered by InstanceNumber",
                 "slice_short_a_phase": "has 7 phases, others 8: matched to theirs by the nearest trigger time"}


@pytest.mark.slow  # one predict per layout (about 7 s each): the default suite and CI run them, the fast tier not
@pytest.mark.parametrize("kind", KINDS)
def test_layout_is_read_reported_and_gets_a_valid_seg(base: Path, tmp_path: Path, kind: str, capsys) -> None:
    import jsonschema

    from mi_pipeline.clinical.io import report_schema

    folder, extra = build(kind, base, tmp_path)
    out = tmp_path / "out"
    code = run_main(predict.main, ["--dicom", str(folder), "--out", str(out), "--run-dir", str(base / "run"), *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    (subject,) = [p for p in out.iterdir() if p.is_dir()]
    report = json.loads((subject / "report.json").read_text())
    jsonschema.validate(report, report_schema())
    assert (subject / "qc.png").is_file() and (subject / "bullseye.png").is_file()
    if kind == "no_trigger_time":  # no trigger times: ED from the images, as for a NIfTI cine
        assert not report["frames"]["ed_method"].startswith("DICOM TriggerTime"), report["frames"]
    else:
        assert report["frames"]["ed_method"].startswith("DICOM TriggerTime") and report["frames"]["ed"] == 0
    if kind in EXPECTED_NOTE:
        assert any(EXPECTED_NOTE[kind] in w for w in report["warnings"]), report["warnings"]
    assert report["outputs"]["dicom_seg"] == ["infarct_seg.dcm"], report["warnings"]
    seg_path = subject / "infarct_seg.dcm"
    if kind == "leading_zero_uids":  # the SEG must reference them unchanged: dciodvfy's errors are on those alone
        errors, _ = dciodvfy(seg_path)
        assert errors and all("Leading zeroes" in e or "invalid data values" in e for e in errors), errors
    else:
        assert_valid(seg_path)
    stack = read_stack(Path(report["cine"]), series=extra[1] if extra else None)
    mask = np.asarray(nib.load(str(subject / "infarct_seg.nii.gz")).dataobj)
    assert_seg_equals_mask(seg_path, [row[0] for row in stack.datasets], mask)
    if kind == "two_series":  # the rule keeps series 7 (same image count, higher SeriesNumber)
        assert {str(ds.SeriesNumber) for ds in stack.first_frame_datasets()} == {"7"}


def test_seg_that_cannot_be_built_is_a_warning_after_the_result(base: Path, tmp_path: Path, capsys) -> None:
    """Sources from two studies cannot share one SEG: the report says why, exit 0, everything else written."""
    folder = tmp_path / "p1"
    write_subject_dicom(generate_subject(PARAMS, 0), tmp_path / "s", per_slice_series=True, seed=PARAMS.seed)
    shutil.copytree(tmp_path / "s" / "cine", folder)
    first_series = pydicom.dcmread(_files(folder)[0]).SeriesInstanceUID
    _rewrite(folder, lambda ds, i: setattr(ds, "StudyInstanceUID", "1.2.3.4") if ds.SeriesInstanceUID != first_series
             else None)
    code = run_main(predict.main, ["--dicom", str(folder), "--out", str(tmp_path / "o"), "--run-dir", str(base / "run")])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "p1" / "report.json").read_text())
    assert report["outputs"]["dicom_seg"] == [] and not (tmp_path / "o" / "p1" / "infarct_seg.dcm").exists()
    assert any(w.startswith("DICOM SEG not written") for w in report["warnings"])
    assert "warning: p1: DICOM SEG not written" in err
    assert (tmp_path / "o" / "p1" / "qc.png").is_file() and (tmp_path / "o" / "p1" / "infarct_seg.nii.gz").is_file()


def test_folder_of_subjects_goes_on_past_a_bad_one(base: Path, tmp_path: Path, capsys) -> None:
    shutil.copytree(base / "p1" / "cine", tmp_path / "in" / "a")
    (tmp_path / "in" / "b").mkdir()
    shutil.copy(_files(base / "p1" / "cine")[0], tmp_path / "in" / "b" / "only.dcm")  # one image: not a stack
    shutil.copytree(base / "p1" / "cine", tmp_path / "in" / "c")
    code = run_main(predict.main, ["--dicom", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                                   "--run-dir", str(base / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert (tmp_path / "o" / "a" / "report.json").is_file() and (tmp_path / "o" / "c" / "report.json").is_file()
    assert "error: b: " in err and "1 of 3 subject(s) failed (b)" in err


@pytest.mark.parametrize("kind", [*COMPRESSED, "monochrome1", "no_trigger_time", "slice_short_a_phase"])
def test_other_writers_series_read_exactly_as_our_export(base: Path, tmp_path: Path, kind: str) -> None:
    """Compressed pixel data, MONOCHROME1 and no TriggerTime: the same cine, voxel for voxel; a slice
    short of its last phase: the same cine but that phase, which repeats the nearest one it has."""
    plain = read_stack(base / "p1" / "cine")
    folder, _ = build(kind, base, tmp_path)
    if kind == "slice_short_a_phase":
        stack = read_stack(folder)
        short = next(k for k in range(plain.array.shape[2]) if any("has 7 phases" in n for n in stack.notes)
                     and not np.array_equal(stack.array[:, :, k], plain.array[:, :, k]))
        expected = plain.array.copy()
        expected[:, :, short, -1] = plain.array[:, :, short, -2]  # its last phase is gone: the nearest stands in
        np.testing.assert_array_equal(stack.array, expected)
        assert stack.trigger_times_ms == plain.trigger_times_ms
        return
    if kind in COMPRESSED:
        assert str(pydicom.dcmread(_files(folder)[0]).file_meta.TransferSyntaxUID) != str(
            pydicom.dcmread(_files(base / "p1" / "cine")[0]).file_meta.TransferSyntaxUID)
    stack = read_stack(folder)
    np.testing.assert_array_equal(stack.array, plain.array)
    np.testing.assert_array_equal(stack.affine, plain.affine)
    assert stack.trigger_times_ms == ([] if kind == "no_trigger_time" else plain.trigger_times_ms)


def test_an_undecodable_compressed_series_is_one_line_naming_its_syntax_and_the_fix(base: Path, tmp_path: Path,
                                                                                     capsys) -> None:
    """12-bit JPEG Extended: neither GDCM (through pydicom) nor Pillow decodes it."""
    folder = _compressed(base / "p1" / "cine", tmp_path / "p1", "jpeg_12bit_extended")
    code = run_main(predict.main, ["--dicom", str(folder), "--out", str(tmp_path / "o"), "--run-dir", str(base / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert "cannot decode its JPEG Extended (Process 2 and 4) pixel data (" in err, err
    assert "12-bit" in err and "dcmdjpeg IN OUT" in err, err
    assert not (tmp_path / "o" / "p1").exists()


def _sops(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in folder.rglob("IM_*.dcm")}


def test_export_uids_are_shared_only_by_the_same_image(tmp_path: Path) -> None:
    a = generate_subject(PhantomConfig(subjects=1, seed=4242, size=64, slices=4, frames=8), 0)
    b = generate_subject(PhantomConfig(subjects=1, seed=7, size=64, slices=4, frames=8), 0)
    assert a.id == b.id  # same subject id, same patient id: the UIDs must still differ
    write_subject_dicom(a, tmp_path / "a", seed=4242)
    write_subject_dicom(b, tmp_path / "b", seed=7)
    write_subject_dicom(a, tmp_path / "a_per_slice", seed=4242, per_slice_series=True)
    write_subject_dicom(a, tmp_path / "a_again", seed=4242)
    sa, sb = _sops(tmp_path / "a"), _sops(tmp_path / "b")
    assert len(sa) == len(list((tmp_path / "a").rglob("IM_*.dcm")))  # unique inside one export
    assert not sa & sb
    # the cine's layout differs (other series): no shared image; the LGE is the same image in both, so it shares
    assert not _sops(tmp_path / "a" / "cine") & _sops(tmp_path / "a_per_slice" / "cine")
    assert _sops(tmp_path / "a" / "lge") == _sops(tmp_path / "a_per_slice" / "lge")
    assert _sops(tmp_path / "a_again") == sa  # deterministic


@pytest.mark.parametrize("per_slice", [False, True])
def test_export_is_a_valid_mr_image_iod(tmp_path: Path, per_slice: bool) -> None:
    write_subject_dicom(generate_subject(PARAMS, 0), tmp_path / "s", seed=PARAMS.seed, per_slice_series=per_slice)
    for stack in ("cine", "lge"):
        for f in _files(tmp_path / "s" / stack)[:3]:
            assert_valid(f)


@pytest.mark.slow
def test_cohort_over_dicom_exports_has_a_row_for_every_subject(base: Path, tmp_path: Path) -> None:
    """Anonymised, per-file-frame-of-reference and SEG-less subjects: every one has a row, none failed."""
    import csv

    from mi_pipeline import cohort

    root = tmp_path / "in"
    for kind in ("anonymised_dates", "frame_of_reference_per_file", "one_series"):
        folder, _ = build(kind, base, tmp_path / kind)
        shutil.copytree(folder, root / kind)
    out = tmp_path / "out"
    assert run_main(predict.main, ["--cohort", "--cine", str(root), "--out", str(out), "--run-dir",
                                   str(base / "run")]) == 0
    with open(out / cohort.TABLE) as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["subject"] for r in rows) == ["anonymised_dates", "frame_of_reference_per_file", "one_series"]
    assert not [r for r in rows if r["flags"].startswith("failed")]
    for r in rows:
        assert (out / r["subject"] / "infarct_seg.dcm").is_file()


def test_find_images_names_every_skip_reason(base: Path, tmp_path: Path) -> None:
    """Copies, non-DICOM files, a structured report and labels beside the images: one note per reason."""
    from mi_pipeline.data.dicom_files import find_images

    folder = tmp_path / "p1"
    shutil.copytree(base / "p1" / "cine", folder)
    images = _files(folder)
    for f in images[:2]:
        shutil.copy(f, folder / f"copy_{f.name}")
    (folder / "README").write_text("exported by a PACS\n")
    shutil.copy(base / "p1" / "cine_label.nii.gz", folder / "cine_label.nii.gz")  # never opened
    _sr(folder / "SR00001", images[0])
    found = find_images(folder)
    assert sorted(p.name for p, _ in found.headers) == sorted(p.name for p in images)
    assert sorted(found.notes) == sorted([f"{folder}: skipped 2 file(s): a copy of another file (the same SOPInstanceUID)",
                                          f"{folder}: skipped 1 file(s): not DICOM",
                                          f"{folder}: skipped 1 file(s): no image (structured report)"])
