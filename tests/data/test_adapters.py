"""Dataset adapters on small files written in each dataset's exact layout, with real header quirks:
anisotropic ~1.5 x 1.5 x 10 mm voxels, oblique affines, int16 data with scl_slope."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mi_pipeline.config import PhantomConfig, load_config
from mi_pipeline.data import adapters, cache
from mi_pipeline.data import prepare as prep
from mi_pipeline.data.phantom import generate_subject
from mi_pipeline.data.preprocess import preprocess_subject
from mi_pipeline.errors import InputError

PARAMS = PhantomConfig(subjects=2, seed=11, size=64, slices=4, frames=8, spacing_mm=1.5, slice_thickness_mm=10.0)
CFG_SET = ["data.crop=48", "data.frames=4", "data.spacing_mm=1.6"]


@pytest.fixture(scope="module")
def hearts():
    return [generate_subject(PARAMS, i) for i in range(2)]


def _save(data: np.ndarray, affine: np.ndarray, path: Path, slope: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if slope is not None:  # int16 with scl_slope, as scanners export magnitude images
        img = nib.Nifti1Image((data / slope).round().astype(np.int16), affine)
        img.header.set_slope_inter(slope, 0.0)
    else:
        img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _check_geometry(h) -> None:
    spacing = np.linalg.norm(h.cine_affine[:3, :3], axis=0)
    assert np.allclose(spacing, (1.5, 1.5, 10.0))
    rot = h.cine_affine[:3, :3] / spacing
    assert not np.allclose(np.abs(rot), np.eye(3), atol=1e-3)  # oblique


def _acdc(root: Path, hearts) -> None:
    for i, h in enumerate(hearts):
        sid = f"patient{i + 1:03d}"
        folder = root / sid
        _save(h.cine.astype(np.float32), h.cine_affine, folder / f"{sid}_4d.nii.gz", slope=2.0)
        ed, es = h.info["ed"], h.info["es"]
        (folder / "Info.cfg").write_text(f"ED: {ed + 1}\nES: {es + 1}\nGroup: MINF\nHeight: 180\nNbFrame: 8\nWeight: 80\n")
        for t in (ed, es):
            lab = h.cine_label[..., t]
            acdc = np.select([lab == 1, np.isin(lab, (2, 3))], [3, 2], 0).astype(np.uint8)
            acdc[:3, :3] = 1  # an "RV" corner: must stay the RV (code 5)
            _save(acdc, h.cine_affine, folder / f"{sid}_frame{t + 1:02d}_gt.nii.gz")


def test_acdc_layout_maps_labels_and_frames(tmp_path: Path, hearts) -> None:
    _check_geometry(hearts[0])
    _acdc(tmp_path, hearts)
    assert adapters.list_subjects("acdc", tmp_path) == ["patient001", "patient002"]
    raw = adapters.load_subject("acdc", tmp_path, "patient001")
    h = hearts[0]
    assert raw.ed == h.info["ed"] and raw.es == h.info["es"] and raw.lge is None
    np.testing.assert_allclose(raw.cine, h.cine.astype(np.float32), atol=1.0)  # scl_slope applied
    ed_lab = raw.cine_label[..., raw.ed]
    assert np.array_equal(ed_lab == 1, h.cine_label[..., h.info["ed"]] == 1)  # LV 3 -> cavity 1
    assert np.array_equal(np.isin(ed_lab, (2,)), np.isin(h.cine_label[..., h.info["ed"]], (2, 3)))
    assert (ed_lab[:3, :3] == 5).all()  # RV kept as its own code (anchors the AHA segments)
    subject = preprocess_subject(raw, load_config(None, CFG_SET).data)
    assert subject.lge is None and subject.cine_label is not None and subject.cine.shape[:2] == (4, 4)
    es_myo = np.isin(subject.cine_label[:, subject.es], (2, 3))
    assert es_myo.any()


def test_acdc_problems_are_one_line(tmp_path: Path, hearts) -> None:
    _acdc(tmp_path, hearts[:1])
    (tmp_path / "patient001" / "Info.cfg").write_text("ED: 1\nES: 40\n")
    with pytest.raises(InputError, match=r"Info.cfg: ES: 40 out of range"):
        adapters.load_subject("acdc", tmp_path, "patient001")
    ed, es = hearts[0].info["ed"], hearts[0].info["es"]
    other = next(t for t in range(8) if t not in (ed, es))
    (tmp_path / "patient001" / "Info.cfg").write_text(f"ED: {ed + 1}\nES: {other + 1}\n")
    with pytest.raises(InputError, match=rf"frame{other + 1:02d}_gt.nii.gz: missing"):
        adapters.load_subject("acdc", tmp_path, "patient001")


def test_acdc_prepares_for_motion_and_registration_refuses(tmp_path: Path, hearts) -> None:
    import torch

    from mi_pipeline.stages.motion import MotionTask
    from mi_pipeline.stages.registration import RegistrationTask

    _acdc(tmp_path / "acdc", hearts)
    cfg = load_config(None, [*CFG_SET, "data.format=acdc", f"data.root={tmp_path / 'acdc'}",
                             "data.val_fraction=0.5", "data.test_fraction=0.0"])
    run = tmp_path / "run"
    prep.prepare_data(cfg, run, log=lambda _m: None)
    assert cache.load_subject(run, "patient001").lge is None
    MotionTask(cfg, run).setup(torch.device("cpu"))  # motion works on cine + ED/ES masks
    with pytest.raises(InputError, match=r"registration needs LGE images"):
        RegistrationTask(cfg, run).setup(torch.device("cpu"))
    # what the plan reads: the cache counts no LGE and cine labels for every subject
    assert (cache.lge_available(cfg, run), cache.cine_labels_available(cfg, run)) == (False, True)
    assert cache.read_manifest(run)["cine_label_subjects"] == len(cache.read_manifest(run)["subjects"]) > 0


def test_mnms_layout_reverse_codes(tmp_path: Path, hearts) -> None:
    h = hearts[1]
    sid = "A1D0Q7"
    folder = tmp_path / sid
    _save(h.cine.astype(np.float32), h.cine_affine, folder / f"{sid}_sa.nii.gz", slope=0.5)
    gt = np.zeros(h.cine_label.shape, np.uint8)
    ed, es = h.info["ed"], h.info["es"]
    for t in (ed, es):
        lab = h.cine_label[..., t]
        gt[..., t] = np.select([lab == 1, np.isin(lab, (2, 3))], [1, 2], 0)
        gt[-3:, -3:, :, t] = 3  # RV
    _save(gt, h.cine_affine, folder / f"{sid}_sa_gt.nii.gz")
    raw = adapters.load_subject("mnms", tmp_path, sid)
    assert (raw.ed, raw.es) == (ed, es)  # ED = larger cavity
    assert np.array_equal(raw.cine_label[..., ed] == 1, h.cine_label[..., ed] == 1)
    assert (raw.cine_label[-3:, -3:, :, ed] == 5).all()  # RV kept as its own code
    (tmp_path / "info.csv").write_text(f"External code,VendorName,ED,ES\n{sid},Siemens,{es},{ed}\n")
    raw = adapters.load_subject("mnms", tmp_path, sid)  # the CSV wins
    assert (raw.ed, raw.es) == (es, ed)


def _emidec(root: Path, h, with_cine: bool) -> str:
    sid = "Case_P001"
    lab = h.lge_label.copy()
    lab[(lab == 3) & (np.arange(lab.shape[0])[:, None, None] % 2 == 0)] = 4  # some no-reflow
    _save(h.lge.astype(np.float32), h.lge_affine, root / sid / "Images" / f"{sid}.nii.gz", slope=1.5)
    _save(lab, h.lge_affine, root / sid / "Contours" / f"{sid}.nii.gz")
    if with_cine:
        _save(h.cine.astype(np.float32), h.cine_affine, root / sid / "Cine" / f"{sid}.nii.gz")
    return sid


def test_emidec_lge_side_and_cine_requirement(tmp_path: Path, hearts) -> None:
    h = next(x for x in hearts if x.info["truth"]["infarct"]) if any(x.info["truth"]["infarct"] for x in hearts) else hearts[0]
    sid = _emidec(tmp_path / "a", h, with_cine=False)
    assert adapters.list_subjects("emidec", tmp_path / "a") == [sid]
    from mi_pipeline.data.adapters import emidec

    lge, _, labels, _, _ = emidec.load_lge(tmp_path / "a", sid)
    assert labels.max() <= 4 and np.isin(labels, (2, 3, 4)).any()
    with pytest.raises(InputError, match=r"EMIDEC provides LGE only"):
        adapters.load_subject("emidec", tmp_path / "a", sid)
    sid = _emidec(tmp_path / "b", h, with_cine=True)
    raw = adapters.load_subject("emidec", tmp_path / "b", sid)
    subject = preprocess_subject(raw, load_config(None, CFG_SET).data)
    assert subject.lge is not None and subject.lge_label.max() <= 3  # no-reflow folded into infarct
    if h.info["truth"]["infarct"]:
        assert (subject.lge_label == 3).any()


def _generic_files(root: Path, h) -> dict[str, str]:
    _save(h.cine.astype(np.float32), h.cine_affine, root / "img" / "s1_cine.nii.gz", slope=2.0)
    _save(h.lge.astype(np.float32), h.lge_affine, root / "img" / "s1_lge.nii.gz")
    _save(h.lge_label, h.lge_affine, root / "lab" / "s1_lge_label.nii.gz")
    return {"cine": "img/s1_cine.nii.gz", "lge": "img/s1_lge.nii.gz", "lge_label": "lab/s1_lge_label.nii.gz"}


def test_manifest_csv_and_yaml(tmp_path: Path, hearts) -> None:
    paths = _generic_files(tmp_path, hearts[0])
    (tmp_path / "manifest.csv").write_text("subject,cine,lge,lge_label,ed\n"
                                          f"s1,{paths['cine']},{paths['lge']},{paths['lge_label']},0\n")
    assert adapters.list_subjects("manifest", tmp_path) == ["s1"]
    raw = adapters.load_subject("manifest", tmp_path / "manifest.csv", "s1")
    assert raw.lge is not None and raw.cine.shape[3] == 8
    (tmp_path / "m.yaml").write_text("subjects:\n" + "".join(
        f"  - {{subject: s1, cine: {paths['cine']}, lge: {paths['lge']}, lge_label: {paths['lge_label']}}}\n"))
    assert adapters.load_subject("manifest", tmp_path / "m.yaml", "s1").lge_label is not None


def test_manifest_paths_cannot_escape_the_root(tmp_path: Path, hearts) -> None:
    root = tmp_path / "dataset"
    _generic_files(tmp_path, hearts[0])  # files outside the dataset root
    root.mkdir()
    (root / "manifest.csv").write_text("subject,cine,lge,lge_label\ns1,../img/s1_cine.nii.gz,,\n")
    with pytest.raises(InputError, match=r"leaves the dataset root"):
        adapters.load_subject("manifest", root, "s1")
    (root / "manifest.csv").write_text(f"subject,cine,lge,lge_label\ns1,{tmp_path / 'img' / 's1_cine.nii.gz'},,\n")
    with pytest.raises(InputError, match=r"leaves the dataset root"):
        adapters.load_subject("manifest", root, "s1")
    (root / "manifest.csv").write_text("subject,cine,lge\n../x,a.nii.gz,\n")
    with pytest.raises(InputError, match=r"unsafe"):
        adapters.list_subjects("manifest", root)


def test_symlink_out_of_the_root_is_refused(tmp_path: Path, hearts) -> None:
    _acdc(tmp_path / "elsewhere", hearts[:1])
    (tmp_path / "acdc").mkdir()
    (tmp_path / "acdc" / "patient001").symlink_to(tmp_path / "elsewhere" / "patient001")
    with pytest.raises(InputError, match=r"leaves the dataset root"):
        adapters.load_subject("acdc", tmp_path / "acdc", "patient001")
