"""DICOM input and output: a phantom subject written as DICOM reads back as its NIfTI, predicts the same,
and gets a DICOM SEG a viewer can open; broken series are one line naming the series.

The DICOM files are written from the phantom (integer-valued) with a rescale slope and intercept, in
the two layouts scanners produce: one series for the whole stack, and one series per slice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mi_pipeline.cli import predict
from mi_pipeline.cli.common import run_main
from mi_pipeline.config import PhantomConfig, load_config
from mi_pipeline.data.dicom import read_stack
from mi_pipeline.data.dicom_export import write_series
from mi_pipeline.data.phantom import generate_subject, write_subject
from tests.data.dicom_checks import assert_seg_equals_mask, assert_valid
from tests.test_inference import TINY, save_untrained

LAYOUTS = ("one_series", "series_per_slice")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("dicom")
    cfg = load_config(TINY)
    save_untrained(cfg, tmp / "run" / "checkpoints")
    params = PhantomConfig(subjects=1, seed=77, size=64, slices=4, frames=8)
    subject = generate_subject(params, 0)
    assert np.linalg.det(subject.cine_affine[:3, :3]) < 0  # slices run against the DICOM normal: reader must reorder
    write_subject(subject, tmp / "nifti" / "p1")
    for layout in LAYOUTS:
        write_series(subject.cine, subject.cine_affine, tmp / layout / "p1", patient_id="p1", slope=0.5,
                     intercept=-100.0, frame_ms=subject.frame_ms, per_slice_series=layout == "series_per_slice")
    return tmp, subject


def _world_lookup(src_affine: np.ndarray, dst_affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Voxel indices in the ``src`` grid of every voxel centre of the ``dst`` grid (asserting they coincide)."""
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape[:3]), indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ dst_affine[:3, :3].T + dst_affine[:3, 3]
    vox = np.linalg.solve(src_affine[:3, :3], (world - src_affine[:3, 3]).T).T
    assert np.abs(vox - np.round(vox)).max() < 1e-3, "DICOM voxel centres are not the NIfTI's in world space"
    return np.round(vox).astype(int)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dicom_reads_back_as_the_nifti(data, layout) -> None:
    tmp, subject = data
    stack = read_stack(tmp / layout / "p1")
    assert stack.array.shape == subject.cine.shape
    assert len(stack.series) == (1 if layout == "one_series" else subject.cine.shape[2])
    idx = _world_lookup(subject.cine_affine, stack.affine, stack.array.shape)
    expected = subject.cine[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float32)
    np.testing.assert_array_equal(stack.array.reshape(-1, stack.array.shape[3]), expected)  # rescale applied
    np.testing.assert_allclose(np.linalg.norm(stack.affine[:3, :3], axis=0),
                               np.linalg.norm(subject.cine_affine[:3, :3], axis=0), atol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_predict_on_dicom_equals_nifti_and_writes_a_seg(data, layout, capsys) -> None:
    import highdicom as hd
    import jsonschema

    from mi_pipeline.clinical.io import report_schema

    tmp, subject = data
    run = ["--run-dir", str(tmp / "run")]
    out_n, out_d = tmp / f"out_nifti_{layout}", tmp / f"out_{layout}"
    assert run_main(predict.main, ["--cine", str(tmp / "nifti" / "p1" / "cine.nii.gz"), "--out", str(out_n), *run]) == 0
    assert run_main(predict.main, ["--dicom", str(tmp / layout / "p1"), "--out", str(out_d), *run]) == 0
    rep_n = json.loads((out_n / "p1" / "report.json").read_text())
    rep_d = json.loads((out_d / "p1" / "report.json").read_text())
    assert abs(rep_n["infarct_percent"] - rep_d["infarct_percent"]) <= 0.1
    assert rep_n["frames"]["ed"] == rep_d["frames"]["ed"]
    for rep in (rep_n, rep_d):
        jsonschema.validate(rep, report_schema())
    assert rep_d["input"]["format"] == "dicom" and rep_n["input"]["format"] == "nifti"

    seg_n = nib.load(str(out_n / "p1" / "infarct_seg.nii.gz"))
    seg_d = nib.load(str(out_d / "p1" / "infarct_seg.nii.gz"))
    idx = _world_lookup(seg_n.affine, seg_d.affine, seg_d.shape)
    a = np.asarray(seg_n.dataobj)[idx[:, 0], idx[:, 1], idx[:, 2]]
    np.testing.assert_array_equal(np.asarray(seg_d.dataobj).reshape(-1), a)  # the same prediction, voxel for voxel

    stack = read_stack(tmp / layout / "p1")
    assert rep_d["outputs"]["dicom_seg"] == ["infarct_seg.dcm"]  # one SEG, even for one series per slice
    assert rep_d["frames"]["ed_method"].startswith("DICOM TriggerTime")
    ed = rep_d["frames"]["ed"]
    seg = hd.seg.segread(out_d / "p1" / "infarct_seg.dcm")
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["viable myocardium", "infarct"]
    assert seg.StudyInstanceUID == stack.datasets[0][0].StudyInstanceUID
    referenced = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                  for i in s.ReferencedInstanceSequence}
    assert referenced == {str(stack.datasets[k][ed].SOPInstanceUID) for k in range(len(stack.datasets))}
    assert {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence} == set(stack.series)
    assert "RESEARCH USE" in seg.ContentDescription
    assert_seg_equals_mask(out_d / "p1" / "infarct_seg.dcm", [row[ed] for row in stack.datasets],
                           np.asarray(seg_d.dataobj))
    assert_valid(out_d / "p1" / "infarct_seg.dcm")


def _copy(tmp: Path, layout: str, dest: Path) -> Path:
    shutil.copytree(tmp / layout / "p1", dest)
    return dest


@pytest.mark.parametrize("case", ["incomplete_slice", "long_axis_description", "not_dicom_pixels"])
def test_bad_dicom_is_one_line_naming_the_series(data, case, tmp_path, capsys) -> None:
    import pydicom

    tmp, subject = data
    folder = tmp_path / "p1"
    if case == "incomplete_slice":
        _copy(tmp, "series_per_slice", folder)  # 3 of a slice's 8 phases missing: too few to match to the others
        at_position = [f for f in sorted(folder.iterdir())
                       if pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient
                       == pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True).ImagePositionPatient]
        for f in at_position[2:5]:
            f.unlink()
        expect = "incomplete: the slice at"
    elif case == "long_axis_description":
        _copy(tmp, "one_series", folder)
        for f in folder.iterdir():
            ds = pydicom.dcmread(f)
            ds.SeriesDescription = "cine 4CH retro"
            ds.save_as(f)
        expect = "long-axis"
    else:
        _copy(tmp, "one_series", folder)
        target = sorted(folder.iterdir())[0]
        raw = target.read_bytes()
        target.write_bytes(raw[: len(raw) - 3000])  # pixel data cut short
        expect = "cannot decode pixel data"
    code = run_main(predict.main, ["--dicom", str(folder), "--out", str(tmp_path / "o"), "--run-dir", str(tmp / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert expect in err and "series" in err, err
    assert not (tmp_path / "o" / "p1" / "report.json").exists()


@pytest.mark.parametrize("per_slice", [False, True])
def test_dicom_dataset_layout_prepares_like_the_nifti_layout(tmp_path, per_slice) -> None:
    """data.format: dicom (cine and LGE as DICOM series, labels as NIfTI) caches what the generic layout does."""
    from mi_pipeline.data import adapters
    from mi_pipeline.data.dicom_export import write_subject_dicom
    from mi_pipeline.data.preprocess import preprocess_subject

    cfg = load_config(TINY)
    params = PhantomConfig(subjects=1, seed=5, size=64, slices=4, frames=8)
    subject = generate_subject(params, 0)
    write_subject(subject, tmp_path / "nifti" / "s1")
    write_subject_dicom(subject, tmp_path / "dicom" / "s1", per_slice_series=per_slice)
    assert adapters.list_subjects("dicom", tmp_path / "dicom") == ["s1"]
    a = preprocess_subject(adapters.load_subject("generic", tmp_path / "nifti", "s1"), cfg.data)
    b = preprocess_subject(adapters.load_subject("dicom", tmp_path / "dicom", "s1"), cfg.data)
    assert a.es == b.es
    np.testing.assert_allclose(b.affine[:3, 3], a.affine[:3, 3], atol=1e-3)  # same crop in world space
    x, y = a.cine, b.cine  # slice order may differ (DICOM orders along the normal): match slices by content
    order = [int(np.argmin([np.abs(y[j] - x[i]).max() for j in range(len(y))])) for i in range(len(x))]
    assert sorted(order) == list(range(len(x)))
    for name in ("cine", "lge", "lge_label", "cine_label"):
        np.testing.assert_allclose(getattr(b, name)[order], getattr(a, name), atol=1e-5, err_msg=name)


def test_dicom_layout_label_on_another_grid_is_one_line(tmp_path) -> None:
    from mi_pipeline.data import adapters
    from mi_pipeline.data.dicom_export import write_subject_dicom
    from mi_pipeline.errors import InputError

    subject = generate_subject(PhantomConfig(subjects=1, seed=5, size=64, slices=4, frames=8), 0)
    write_subject_dicom(subject, tmp_path / "s1")
    img = nib.load(str(tmp_path / "s1" / "lge_label.nii.gz"))
    shifted = img.affine.copy()
    shifted[:3, 3] += 0.4 * img.affine[:3, 0]  # 0.4 voxel off: not the LGE grid
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), shifted), str(tmp_path / "s1" / "lge_label.nii.gz"))
    with pytest.raises(InputError, match="lge_label.nii.gz: label grid is not the LGE grid"):
        adapters.load_subject("dicom", tmp_path, "s1")


def test_phantom_command_writes_the_dicom_layout(tmp_path) -> None:
    from mi_pipeline import phantom
    from mi_pipeline.data import adapters

    assert phantom.main(["--out", str(tmp_path), "--subjects", "1", "--size", "64", "--slices", "3", "--frames", "4",
                         "--dicom", "series-per-slice"]) == 0
    assert adapters.list_subjects("dicom", tmp_path) == ["phantom_001"]
    raw = adapters.load_subject("dicom", tmp_path, "phantom_001")
    assert raw.cine.shape == (64, 64, 3, 4) and raw.lge_label is not None and raw.cine_label is not None


def test_dicom_layout_takes_ed_from_the_smallest_trigger_time(tmp_path) -> None:
    """Without ed: in info.yaml, ED is the frame with the smallest TriggerTime, and the subject records how."""
    import pydicom

    from mi_pipeline.data import adapters
    from mi_pipeline.data.dicom_export import write_subject_dicom

    subject = generate_subject(PhantomConfig(subjects=1, seed=5, size=64, slices=3, frames=6), 0)
    write_subject_dicom(subject, tmp_path / "s1")
    (tmp_path / "s1" / "info.yaml").write_text("es: 3\n")
    for f in (tmp_path / "s1" / "cine").iterdir():  # trigger times shifted: the scanner's order, not file order
        ds = pydicom.dcmread(f)
        ds.TriggerTime = f"{(float(ds.TriggerTime) + 500.0) % 600.0:.3f}"
        ds.save_as(f)
    shifted = [(t * subject.frame_ms + 500.0) % 600.0 for t in range(6)]
    first = int(np.argmin(shifted))  # the phantom frame the scanner triggered first
    raw = adapters.load_subject("dicom", tmp_path, "s1")
    assert raw.ed == 0 and raw.ed_method == f"DICOM TriggerTime (smallest: {min(shifted):.3f} ms)".replace(".000 ", " ")
    assert raw.cine[..., 0].sum() == subject.cine[..., first].astype(np.float32).sum()
    (tmp_path / "s1" / "info.yaml").write_text("ed: 2\nes: 4\n")
    raw = adapters.load_subject("dicom", tmp_path, "s1")
    assert raw.ed == 2 and raw.ed_method == "given"
