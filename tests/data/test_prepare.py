"""Step 1 end to end on a tiny phantom: cache contents, splits, manifest last, nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mi_pipeline.config import Config, load_config
from mi_pipeline.data import cache, generic
from mi_pipeline.data import prepare as prep
from mi_pipeline.data.preprocess import lv_center_heuristic, preprocess_subject
from mi_pipeline.errors import ConfigError, InputError

TINY = ["data.phantom.subjects=5", "data.phantom.size=64", "data.phantom.slices=4", "data.phantom.frames=8",
        "data.crop=48", "data.frames=8"]


def _cfg(*extra: str) -> Config:
    return load_config(None, [*TINY, *extra])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("run")
    summary = prep.prepare_data(_cfg(), run, log=lambda _m: None)
    return run, summary


def _generic_copy(prepared_run: Path, dst: Path) -> Path:
    shutil.copytree(prepared_run / "data" / "phantom", dst, ignore=shutil.ignore_patterns(".phantom.json"))
    return dst


def test_prepare_writes_cache_splits_manifest(prepared: tuple[Path, dict]) -> None:
    run, summary = prepared
    assert summary["subjects"] == 5 and summary["n_train"] + summary["n_val"] + summary["n_test"] == 5
    assert summary["n_train"] >= 1 and summary["n_val"] >= 1 and summary["cine_shape"] == [4, 8, 48, 48]
    assert prep.data_is_prepared(_cfg(), run)
    splits = {name: cache.read_split(run, name) for name in cache.SPLITS}
    every = sum(splits.values(), [])
    assert sorted(every) == sorted(set(every)) == [f"phantom_{i:03d}" for i in range(1, 6)]
    for subject in cache.load_split(run, "train"):
        assert subject.cine.shape == (4, 8, 48, 48) and subject.cine.dtype == np.float32
        assert 0.0 <= subject.cine.min() and subject.cine.max() <= 1.0
        assert subject.lge is not None and subject.lge.shape == (4, 48, 48)
        assert subject.lge_label is not None and set(np.unique(subject.lge_label)) <= {0, 1, 2, 3}
        assert subject.cine_label is not None and subject.cine_label.shape == subject.cine.shape
        assert 1 <= subject.es < 8
        # 48 px x 1.6 mm (77 mm) does not hold these hearts with predict's margin: the crop widens
        assert subject.spacing[0] == subject.spacing[1] > 1.6 and subject.spacing[2] == pytest.approx(8.0)
        cav = (subject.cine_label == 1).sum(axis=(0, 2, 3))
        assert cav[0] == cav.max() and cav[subject.es] == cav.min()  # frame 0 is ED, es is ES
        # labels still match the pixels after preprocessing: blood bright, myocardium grey
        blood = subject.cine[subject.cine_label == 1].mean()
        assert blood > 2 * subject.cine[np.isin(subject.cine_label, (2, 3))].mean()
        # LGE lands on the cine grid with the heart overlapping (only the breath-hold offset remains)
        lge_myo, cine_myo = np.isin(subject.lge_label, (2, 3)), np.isin(subject.cine_label[:, 0], (2, 3))
        assert 2 * (lge_myo & cine_myo).sum() / (lge_myo.sum() + cine_myo.sum()) > 0.2


def test_prepare_is_deterministic_and_reuses_phantom(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = prepared
    messages: list[str] = []
    other = tmp_path / "other"
    cfg = load_config(None, [*TINY, f"data.root={run / 'data' / 'phantom'}"])
    prep.prepare_data(cfg, other, log=messages.append)
    assert any("already" in m for m in messages)  # the complete phantom was not regenerated
    for name in cache.SPLITS:
        assert cache.read_split(run, name) == cache.read_split(other, name)
    a, b = cache.load_subject(run, "phantom_002"), cache.load_subject(other, "phantom_002")
    np.testing.assert_array_equal(a.cine, b.cine)
    np.testing.assert_array_equal(a.lge_label, b.lge_label)


def test_data_is_prepared_tracks_config_and_files(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = prepared
    assert not prep.data_is_prepared(_cfg("data.split_seed=7"), run)
    copy = tmp_path / "copy"
    shutil.copytree(run / "data" / "cache", copy / "data" / "cache")
    shutil.copytree(run / "data" / "splits", copy / "data" / "splits")
    assert prep.data_is_prepared(_cfg(), copy)
    (copy / "data" / "cache" / "phantom_003.npz").unlink()
    assert not prep.data_is_prepared(_cfg(), copy)
    assert not prep.data_is_prepared(_cfg(), tmp_path / "nothing")


def test_manifest_written_last(prepared: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = prepared
    root = _generic_copy(run, tmp_path / "ds")
    seen: list[str] = []
    real_manifest, real_splits = cache.write_manifest, cache.write_splits

    def splits(run_dir: Path, value: dict) -> None:
        seen.append("splits")
        real_splits(run_dir, value)

    def manifest(run_dir: Path, ids: list[str], data_hash: str, **counts: int | None) -> None:
        assert all((cache.cache_dir(run_dir) / f"{s}.npz").is_file() for s in ids)
        assert all((cache.splits_dir(run_dir) / f"{n}.txt").is_file() for n in cache.SPLITS)
        seen.append("manifest")
        real_manifest(run_dir, ids, data_hash, **counts)

    monkeypatch.setattr(cache, "write_splits", splits)
    monkeypatch.setattr(cache, "write_manifest", manifest)
    out = tmp_path / "run"
    prep.prepare_data(_cfg("data.format=generic", f"data.root={root}"), out, log=lambda _m: None)
    assert seen == ["splits", "manifest"]
    assert sorted(p.name for p in (out / "data").iterdir()) == ["cache", "splits"]  # no staging left behind


def test_bad_input_leaves_no_cache(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = prepared
    root = _generic_copy(run, tmp_path / "ds")
    bad = root / "phantom_004" / "lge.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "run"
    with pytest.raises(InputError) as info:
        prep.prepare_data(_cfg("data.format=generic", f"data.root={root}"), out, log=lambda _m: None)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert not (out / "data" / "cache").exists() and not (out / "data" / "splits").exists()
    assert [p.name for p in (out / "data").iterdir()] == []  # no staging folder either


def test_crash_while_writing_leaves_old_cache_intact(prepared: tuple[Path, dict], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = prepared
    out = tmp_path / "run"
    shutil.copytree(run / "data" / "cache", out / "data" / "cache")
    shutil.copytree(run / "data" / "splits", out / "data" / "splits")
    before = sorted(p.name for p in (out / "data" / "cache").iterdir())
    calls = {"n": 0}
    real = cache.save_subject

    def flaky(run_dir: Path, subject: cache.Subject) -> Path:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(run_dir, subject)

    monkeypatch.setattr(cache, "save_subject", flaky)
    root = _generic_copy(run, tmp_path / "ds")
    with pytest.raises(OSError):
        prep.prepare_data(_cfg("data.format=generic", f"data.root={root}", "data.split_seed=3"), out,
                          log=lambda _m: None)
    assert sorted(p.name for p in (out / "data" / "cache").iterdir()) == before
    assert prep.data_is_prepared(_cfg(), out)  # the old, complete cache is still valid for its config
    assert sorted(p.name for p in (out / "data").iterdir()) == ["cache", "splits"]


def test_phantom_regenerated_when_params_change(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config(None, ["data.phantom.subjects=2", "data.phantom.size=64", "data.phantom.slices=2",
                             "data.phantom.frames=4", "data.crop=48", "data.frames=4"])
    prep.prepare_data(cfg, run, log=lambda _m: None)
    cfg3 = load_config(None, ["data.phantom.subjects=3", "data.phantom.size=64", "data.phantom.slices=2",
                              "data.phantom.frames=4", "data.crop=48", "data.frames=4"])
    messages: list[str] = []
    summary = prep.prepare_data(cfg3, run, log=messages.append)
    assert summary["subjects"] == 3 and any("generating" in m for m in messages)
    assert prep.data_is_prepared(cfg3, run) and not prep.data_is_prepared(cfg, run)


def test_phantom_refuses_foreign_folder(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("precious")
    cfg = load_config(None, [*TINY, f"data.root={root}"])
    with pytest.raises(InputError, match="refusing to overwrite"):
        prep.prepare_data(cfg, tmp_path / "run", log=lambda _m: None)
    assert (root / "notes.txt").read_text() == "precious"


def test_splits_by_subject() -> None:
    ids = [f"s{i}" for i in range(10)]
    a = prep.make_splits(ids, 0.2, 0.2, seed=0)
    assert a == prep.make_splits(list(reversed(ids)), 0.2, 0.2, seed=0)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (6, 2, 2)
    assert prep.make_splits(ids, 0.2, 0.2, seed=1) != a
    two = prep.make_splits(["a", "b"], 0.0, 0.5, seed=0)
    assert len(two["train"]) == 1 and len(two["val"]) == 1 and two["test"] == []
    assert prep.make_splits(["a"], 0.2, 0.2, seed=0) == {"train": ["a"], "val": [], "test": []}


def test_orientation_flip_and_label_free_centre(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    """A cine stored with a flipped in-plane axis gives the same cached arrays; the heuristic finds the LV."""
    run, _ = prepared
    root = _generic_copy(run, tmp_path / "ds")
    cfg = _cfg()
    raw = generic.load_subject(root, "phantom_001")
    flipped_dir = root / "flipped"
    shutil.copytree(root / "phantom_001", flipped_dir)
    for name in ("cine.nii.gz", "cine_label.nii.gz"):
        img = nib.load(str(root / "phantom_001" / name))
        flip = np.diag([-1.0, 1.0, 1.0, 1.0])
        flip[0, 3] = img.shape[0] - 1
        data = np.asarray(img.dataobj)[::-1]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip), str(flipped_dir / name))
    flipped = generic.load_subject(root, "flipped")
    a, b = preprocess_subject(raw, cfg.data), preprocess_subject(flipped, cfg.data)
    np.testing.assert_allclose(a.cine, b.cine, atol=1e-6)
    np.testing.assert_array_equal(a.cine_label, b.cine_label)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)

    spacing = tuple(float(v) for v in np.linalg.norm(raw.cine_affine[:3, :2], axis=0))
    ci, cj = lv_center_heuristic(raw.cine, spacing)  # what predict uses on unlabelled cines
    ti, tj = np.argwhere(raw.cine_label[..., raw.ed] > 0)[:, :2].mean(axis=0)
    assert np.hypot((ci - ti) * spacing[0], (cj - tj) * spacing[1]) < 15.0
    unlabelled = preprocess_subject(raw, cfg.data, center=(ci, cj))
    assert np.isin(unlabelled.lge_label, (2, 3)).any()


def _break_three(prepared_run: Path, dst: Path) -> tuple[Path, list[str]]:
    """A generic copy of the tiny phantom with three subjects broken in three different ways."""
    root = _generic_copy(prepared_run, dst)
    lge = root / "phantom_001" / "lge.nii.gz"
    lge.write_bytes(lge.read_bytes()[:200])  # truncated file
    (root / "phantom_002" / "cine.nii.gz").unlink()  # missing file
    label = root / "phantom_004" / "lge_label.nii.gz"
    img = nib.load(label)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), label)  # empty label
    return root, ["phantom_001", "phantom_002", "phantom_004"]


def test_three_bad_subjects_named_in_one_failure(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    root, bad = _break_three(prepared[0], tmp_path / "ds")
    out = tmp_path / "run"
    with pytest.raises(InputError) as info:
        prep.prepare_data(_cfg("data.format=generic", f"data.root={root}"), out, log=lambda _m: None)
    message = str(info.value)
    assert all(sid in message for sid in bad) and "on_bad_subject" in message and "\n" not in message
    assert not (out / "data" / "cache").exists() and not (out / "data" / "splits").exists()


def test_bad_subjects_excluded_when_asked_and_recorded(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    root, bad = _break_three(prepared[0], tmp_path / "ds")
    out = tmp_path / "run"
    cfg = _cfg("data.format=generic", f"data.root={root}", "data.on_bad_subject=exclude", "data.exclude=[phantom_005]")
    lines: list[str] = []
    summary = prep.prepare_data(cfg, out, log=lines.append)
    assert summary["subjects"] == 1 and summary["excluded"] == 4
    kept = [s for name in cache.SPLITS for s in cache.read_split(out, name)]
    assert kept == ["phantom_003"]
    reasons = cache.read_exclusions(out)
    assert sorted(reasons) == [*bad, "phantom_005"]
    assert reasons["phantom_005"] == "listed in data.exclude"
    assert all(sid in reasons[sid] or "lge_label" in reasons[sid] for sid in bad)  # each names its file
    assert sorted(p.name for p in cache.cache_dir(out).glob("*.npz")) == ["phantom_003.npz"]
    assert prep.data_is_prepared(cfg, out)
    assert any("excluding phantom_002" in line for line in lines)


def test_exclude_unknown_subject_is_one_line(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.exclude: nobody not among"):
        prep.prepare_data(_cfg("data.exclude=[nobody]"), prepared[0], log=lambda _m: None)


def test_cache_is_the_same_for_any_worker_count(prepared: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = prepared
    root = _generic_copy(run, tmp_path / "ds")
    outs = {}
    for workers in (1, 3):
        out = tmp_path / f"run{workers}"
        prep.prepare_data(_cfg("data.format=generic", f"data.root={root}", f"data.workers={workers}"), out,
                          log=lambda _m: None)
        outs[workers] = out
    for path in sorted((outs[1] / "data").rglob("*")):
        if path.is_file():
            other = outs[3] / path.relative_to(outs[1])
            assert other.read_bytes() == path.read_bytes(), path.name
    assert len(list((outs[3] / "data" / "cache").glob("*.npz"))) == 5
