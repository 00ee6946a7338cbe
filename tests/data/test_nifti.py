"""Bad input gives one clear line naming the file, never a library traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mi_pipeline.config import PhantomConfig
from mi_pipeline.data import generic
from mi_pipeline.data.nifti import SpacingWarning, load_image, load_label
from mi_pipeline.data.phantom import generate_dataset
from mi_pipeline.errors import InputError

AFFINE = np.diag([1.5, 1.5, 8.0, 1.0])


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _cine(shape: tuple[int, ...] = (16, 16, 3, 5)) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def _expect(path: Path, fragment: str, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert str(path) in message and fragment in message, message
    assert "\n" not in message


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ph")
    generate_dataset(root, PhantomConfig(subjects=1, size=64, slices=3, frames=6))
    return root


def test_valid_image_loads(tmp_path: Path) -> None:
    data, affine = load_image(_save(tmp_path / "cine.nii.gz", _cine()), ndim=4, min_frames=2)
    assert data.shape == (16, 16, 3, 5) and data.dtype == np.float32
    np.testing.assert_allclose(affine, AFFINE)


def test_not_a_nifti(tmp_path: Path) -> None:
    path = tmp_path / "cine.nii.gz"
    path.write_text("hello, I am not an image")
    _expect(path, "not a readable NIfTI", lambda: load_image(path, ndim=4))


def test_truncated_gzip(tmp_path: Path) -> None:
    path = _save(tmp_path / "cine.nii.gz", _cine((32, 32, 4, 6)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError) as info:
        load_image(path, ndim=4)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.nii.gz"
    _expect(path, "not found", lambda: load_image(path, ndim=3))


def test_cine_must_be_4d_with_frames(tmp_path: Path) -> None:
    path = _save(tmp_path / "cine.nii.gz", _cine((16, 16, 3)))
    _expect(path, "must be 4D", lambda: load_image(path, ndim=4, what="cine"))
    one = _save(tmp_path / "one.nii.gz", _cine((16, 16, 3, 1)))
    _expect(one, "need at least 2", lambda: load_image(one, ndim=4, min_frames=2))
    two = _save(tmp_path / "two.nii.gz", _cine((16, 16, 3, 2))[..., :1].repeat(2, -1) + np.arange(2, dtype=np.float32))
    assert load_image(two, ndim=4, min_frames=2)[0].shape[3] == 2
    _expect(two, "need at least 3", lambda: load_image(two, ndim=4, min_frames=3))


def test_nan_and_constant(tmp_path: Path) -> None:
    data = _cine()
    data[1, 2, 0, 0] = np.nan
    path = _save(tmp_path / "nan.nii.gz", data)
    _expect(path, "NaN or Inf", lambda: load_image(path, ndim=4))
    flat = _save(tmp_path / "flat.nii.gz", np.full((8, 8, 2), 7.0, np.float32))
    _expect(flat, "constant", lambda: load_image(flat, ndim=3))


def _save_sform_only(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write an affine nibabel would refuse to build a qform from (as broken converters do)."""
    img = nib.Nifti1Image(data, None)
    hdr = img.header
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = affine[0], affine[1], affine[2]
    nib.save(img, str(path))
    return path


def test_singular_or_non_finite_affine(tmp_path: Path) -> None:
    affine = AFFINE.copy()
    affine[:3, 1] = 0.0
    path = _save_sform_only(tmp_path / "lge.nii.gz", _cine((8, 8, 2)), affine)
    _expect(path, "singular", lambda: load_image(path, ndim=3))
    affine = AFFINE.copy()
    affine[0, 3] = np.nan
    path = _save_sform_only(tmp_path / "nan_affine.nii.gz", _cine((8, 8, 2)), affine)
    _expect(path, "non-finite", lambda: load_image(path, ndim=3))


def test_absurd_dimensions_rejected_before_reading(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.nii", _cine((8, 8, 2)))
    raw = bytearray(path.read_bytes())
    dims = np.frombuffer(raw, dtype="<i2", count=8, offset=40).copy()
    dims[1] = 3000
    raw[40:56] = dims.tobytes()
    path.write_bytes(bytes(raw))
    _expect(path, "absurd dimensions", lambda: load_image(path, ndim=3))


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "lge.nii.gz", _cine((8, 8, 2)))
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: simulate what a normal user gets
        monkeypatch.setattr("mi_pipeline.data.nifti.os.access", lambda *_a, **_k: False)
    try:
        _expect(path, "permission denied", lambda: load_image(path, ndim=3))
    finally:
        path.chmod(0o600)


def test_label_checks(tmp_path: Path) -> None:
    shape = (8, 8, 2)
    good = np.zeros(shape, np.uint8)
    good[2:5, 2:5] = 2
    labels, _ = load_label(_save(tmp_path / "ok.nii.gz", good), shape=shape, affine=AFFINE)
    assert labels.dtype == np.uint8 and labels.max() == 2
    bad = good.copy()
    bad[0, 0, 0] = 7
    p = _save(tmp_path / "range.nii.gz", bad)
    _expect(p, "outside 0..4", lambda: load_label(p, shape=shape))
    rv = good.copy()
    rv[0, 0, 0] = 5  # the RV: a cine's labels may mark it, an LGE's may not
    p = _save(tmp_path / "rv.nii.gz", rv)
    assert load_label(p, shape=shape, rv=True)[0].max() == 5
    _expect(p, "outside 0..4", lambda: load_label(p, shape=shape))
    six = _save(tmp_path / "six.nii.gz", np.where(rv == 5, 6, rv).astype(np.uint8))
    _expect(six, "outside 0..5 (0 bg, 1 LV cavity, 2 myo, 3 infarct, 4 no-reflow, 5 RV)",
            lambda: load_label(six, shape=shape, rv=True))
    frac = good.astype(np.float32)
    frac[0, 0, 0] = 1.5
    p = _save(tmp_path / "frac.nii.gz", frac)
    _expect(p, "non-integer", lambda: load_label(p, shape=shape))
    p = _save(tmp_path / "shape.nii.gz", good[:, :, :1])
    _expect(p, "does not match", lambda: load_label(p, shape=shape, image_name="lge.nii.gz"))
    p = _save(tmp_path / "empty.nii.gz", np.where(good > 0, 1, 0).astype(np.uint8))
    _expect(p, "no myocardium", lambda: load_label(p, shape=shape))
    p = _save(tmp_path / "grid.nii.gz", good, np.diag([2.0, 2.0, 8.0, 1.0]))
    _expect(p, "affine differs", lambda: load_label(p, shape=shape, affine=AFFINE))


# ---- generic layout -------------------------------------------------------------------------


def _copy_subject(src_root: Path, dst_root: Path, name: str) -> Path:
    shutil.copytree(src_root / "phantom_001", dst_root / name)
    return dst_root / name


def test_generic_reads_phantom_subject(phantom_root: Path) -> None:
    assert generic.list_subjects(phantom_root) == ["phantom_001"]
    raw = generic.load_subject(phantom_root, "phantom_001")
    assert raw.cine.ndim == 4 and raw.cine_label is not None and raw.cine_label.shape == raw.cine.shape
    assert raw.lge_label.shape == raw.lge.shape and raw.es is not None


def test_generic_dataset_problems(tmp_path: Path, phantom_root: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden").mkdir()  # hidden folders are not subjects
    _expect(empty, "no subject folders", lambda: generic.list_subjects(empty))
    _expect(tmp_path / "absent", "not found", lambda: generic.list_subjects(tmp_path / "absent"))

    root = tmp_path / "root"
    root.mkdir()
    _copy_subject(phantom_root, root, "S1")
    _copy_subject(phantom_root, root, "s1")
    _expect(root / "s1", "duplicate subject id", lambda: generic.list_subjects(root))
    shutil.rmtree(root / "s1")
    (root / "bad name").mkdir()
    _expect(root / "bad name", "unsafe subject folder name", lambda: generic.list_subjects(root))
    shutil.rmtree(root / "bad name")
    assert generic.list_subjects(root) == ["S1"]

    (root / "S1" / "lge_label.nii.gz").unlink()
    _expect(root / "S1" / "lge_label.nii.gz", "missing", lambda: generic.load_subject(root, "S1"))


@pytest.mark.parametrize(
    "text, fragment",
    [("ed: 0\nes: 99\n", "out of range"), ("ed: 0\nsystole: 3\n", "unknown key"), ("- 1\n- 2\n", "must be a mapping"),
     ("ed: [1\n", "not valid YAML"), ("ed: 1.5\n", "must be an integer"), ("ed: 2\nes: 2\n", "es equals ed")],
)
def test_info_yaml_problems(tmp_path: Path, phantom_root: Path, text: str, fragment: str) -> None:
    folder = _copy_subject(phantom_root, tmp_path, "case")
    (folder / "info.yaml").write_text(text)
    _expect(folder / "info.yaml", fragment, lambda: generic.load_subject(tmp_path, "case"))


def test_info_yaml_optional(tmp_path: Path, phantom_root: Path) -> None:
    folder = _copy_subject(phantom_root, tmp_path, "case")
    (folder / "info.yaml").unlink()
    raw = generic.load_subject(tmp_path, "case")
    assert raw.ed == 0 and raw.es is None


def test_lge_outside_cine_field_of_view(tmp_path: Path, phantom_root: Path) -> None:
    folder = _copy_subject(phantom_root, tmp_path, "case")
    for name in ("lge.nii.gz", "lge_label.nii.gz"):
        img = nib.load(str(folder / name))
        affine = img.affine.copy()
        affine[:3, 3] += 1000.0
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), str(folder / name))
    _expect(folder / "lge.nii.gz", "does not overlap", lambda: generic.load_subject(tmp_path, "case"))


def test_cine_label_for_other_subject(tmp_path: Path, phantom_root: Path) -> None:
    folder = _copy_subject(phantom_root, tmp_path, "case")
    label = np.asarray(nib.load(str(folder / "cine_label.nii.gz")).dataobj)
    _save(folder / "cine_label.nii.gz", label[:, :, :2], nib.load(str(folder / "cine.nii.gz")).affine)
    _expect(folder / "cine_label.nii.gz", "does not match", lambda: generic.load_subject(tmp_path, "case"))


def test_unit_sform_with_true_pixdim_reads_the_pixdim_spacing(tmp_path: Path) -> None:
    """ACDC's files: sform (code 2) with unit-length axes, the true voxel size only in pixdim. Read as ITK
    (and so nnU-Net) reads them -- spacing from pixdim, orientation from the sform -- with a warning, for
    the image and its labels alike (they stay on one grid)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    img = nib.Nifti1Image(_cine(), flip)
    img.header.set_zooms((1.5625, 1.5625, 10.0, 1.0))
    img.set_sform(flip, code=2)
    img.set_qform(None, code=0)
    nib.save(img, str(tmp_path / "cine.nii.gz"))
    labels = np.zeros((16, 16, 3), dtype=np.uint8)
    labels[4:12, 4:12] = 2
    lab = nib.Nifti1Image(labels, flip)
    lab.header.set_zooms((1.5625, 1.5625, 10.0))
    lab.set_sform(flip, code=2)
    nib.save(lab, str(tmp_path / "gt.nii.gz"))
    assert np.allclose(nib.load(str(tmp_path / "cine.nii.gz")).affine[:3, :3], flip[:3, :3])  # nibabel: 1 mm
    with pytest.warns(SpacingWarning, match="pixdim"):
        _, affine = load_image(tmp_path / "cine.nii.gz", ndim=4)
    np.testing.assert_allclose(affine, np.diag([-1.5625, -1.5625, 10.0, 1.0]))
    with pytest.warns(SpacingWarning):
        load_label(tmp_path / "gt.nii.gz", shape=(16, 16, 3), affine=affine)


def test_consistent_files_read_without_a_spacing_warning(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", SpacingWarning)
        load_image(_save(tmp_path / "cine.nii.gz", _cine()), ndim=4)
