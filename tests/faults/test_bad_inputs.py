"""The bad-input catalogue, end to end through the real CLI:

    python -m mi_pipeline.train --stage data --run-dir R --config tiny.yaml \
        --set data.format=generic --set data.root=D

Each kind: exit 2, exactly one ``error:`` line on stderr naming the file or key and the problem, no
traceback; nothing under ``checkpoints/`` changes; the previous cache is intact and no staging folder or
temp file is left. The run dir starts as a finished tiny run (cache + motion checkpoints), the damage is
planted in the last subject (so earlier subjects were already staged when it is found).

The CLI processes of all kinds are started together, two at a time (one import of torch each), in a
module fixture; each test then checks its own kind. Function-level NIfTI checks: tests/data/test_nifti.py.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.faults import harness
from tests.faults.conftest import TINY
from tests.helpers import REPO, env

SUBJECT = "phantom_005"  # the last subject in sorted order
SETPRIV = shutil.which("setpriv")


@dataclass
class Case:
    plant: Callable[[Path], None]  # damages the dataset folder
    fragments: tuple[str, ...]  # what the error line must say ({root} and {subj} are substituted)
    args: tuple[str, ...] = ()  # extra CLI arguments (config cases)
    generic: bool = True  # run with data.format=generic data.root=<dataset>
    strict_one_line: bool = False  # stderr must be exactly that one line (errors before any logging)
    drop_root_read: bool = False  # run without CAP_DAC_OVERRIDE so file permissions apply to root
    extra: dict = field(default_factory=dict)


def _file(root: Path, name: str) -> Path:
    return root / SUBJECT / name


def _load(root: Path, name: str) -> nib.Nifti1Image:
    return nib.load(str(_file(root, name)))


def _replace(root: Path, name: str, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    img = _load(root, name)
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(_file(root, name)))


def _array(root: Path, name: str) -> np.ndarray:
    return np.asarray(_load(root, name).dataobj)


def not_nifti(root: Path) -> None:
    _file(root, "cine.nii.gz").write_text("this is a DICOM export log, not an image\n")


def truncated(root: Path) -> None:
    path = _file(root, "cine.nii.gz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def cine_3d(root: Path) -> None:
    _replace(root, "cine.nii.gz", _array(root, "cine.nii.gz")[..., 0].astype(np.float32))


def cine_one_frame(root: Path) -> None:
    _replace(root, "cine.nii.gz", _array(root, "cine.nii.gz")[..., :1].astype(np.float32))


def nan_voxel(root: Path) -> None:
    data = _array(root, "cine.nii.gz").astype(np.float32)
    data[3, 4, 1, 2] = np.nan
    _replace(root, "cine.nii.gz", data)


def inf_voxel(root: Path) -> None:
    data = _array(root, "lge.nii.gz").astype(np.float32)
    data[1, 2, 0] = np.inf
    _replace(root, "lge.nii.gz", data)


def constant_image(root: Path) -> None:
    _replace(root, "lge.nii.gz", np.full(_load(root, "lge.nii.gz").shape, 7.0, dtype=np.float32))


def label_out_of_range(root: Path) -> None:
    data = _array(root, "lge_label.nii.gz").astype(np.uint8)
    data[0, 0, 0] = 9
    _replace(root, "lge_label.nii.gz", data)


def label_shape(root: Path) -> None:
    _replace(root, "lge_label.nii.gz", _array(root, "lge_label.nii.gz")[:-4].astype(np.uint8))


def _patch_sform(path: Path, change: Callable[[np.ndarray], None]) -> None:
    """Edit the sform in the raw header, as a broken converter writes it (nibabel refuses to save such affines)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[252:256] = np.array([0, 1], dtype="<i2").tobytes()  # qform_code 0, sform_code 1: the sform is used
    srows = np.frombuffer(bytes(raw[280:328]), dtype="<f4").reshape(3, 4).copy()
    change(srows)
    raw[280:328] = srows.astype("<f4").tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))


def singular_affine(root: Path) -> None:
    _patch_sform(_file(root, "cine.nii.gz"), lambda srows: srows[:, 1].fill(0.0))  # a zero voxel axis


def non_finite_affine(root: Path) -> None:
    _patch_sform(_file(root, "lge.nii.gz"), lambda srows: srows.__setitem__((0, 3), np.nan))


def missing_lge(root: Path) -> None:
    _file(root, "lge.nii.gz").unlink()


def missing_label(root: Path) -> None:
    _file(root, "lge_label.nii.gz").unlink()


def duplicate_ids(root: Path) -> None:
    shutil.copytree(root / SUBJECT, root / SUBJECT.upper())


def empty_dataset(root: Path) -> None:
    for entry in root.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def unreadable(root: Path) -> None:
    os.chmod(_file(root, "lge.nii.gz"), 0)


def absurd_dimensions(root: Path) -> None:
    path = _file(root, "cine.nii.gz")
    raw = bytearray(gzip.decompress(path.read_bytes()))
    dims = np.frombuffer(bytes(raw[40:56]), dtype="<i2").copy()
    dims[1] = 30000  # a header claiming 30000 x 64 x 3 x 8 voxels (data far too short)
    raw[40:56] = dims.astype("<i2").tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))


def no_overlap(root: Path) -> None:
    for name in ("lge.nii.gz", "lge_label.nii.gz"):
        affine = _load(root, name).affine.copy()
        affine[:3, 3] += 1000.0
        _replace(root, name, _array(root, name), affine)


def python_tag_in_info_yaml(root: Path) -> None:
    marker = root.parent / "PWNED"
    _file(root, "info.yaml").write_text(f'!!python/object/apply:os.system ["touch {marker}"]\n')


def nothing(root: Path) -> None:
    pass


CASES: dict[str, Case] = {
    "not_nifti": Case(not_nifti, ("{subj}/cine.nii.gz", "not a readable NIfTI")),
    "truncated_gz": Case(truncated, ("{subj}/cine.nii.gz", "truncated")),
    "cine_3d": Case(cine_3d, ("{subj}/cine.nii.gz", "must be 4D")),
    "cine_one_frame": Case(cine_one_frame, ("{subj}/cine.nii.gz",)),
    "nan_voxel": Case(nan_voxel, ("{subj}/cine.nii.gz", "NaN or Inf")),
    "inf_voxel": Case(inf_voxel, ("{subj}/lge.nii.gz", "NaN or Inf")),
    "constant_image": Case(constant_image, ("{subj}/lge.nii.gz", "constant")),
    "label_values": Case(label_out_of_range, ("{subj}/lge_label.nii.gz", "outside 0..4")),
    "label_shape": Case(label_shape, ("{subj}/lge_label.nii.gz", "does not match")),
    "singular_affine": Case(singular_affine, ("{subj}/cine.nii.gz", "affine")),
    "non_finite_affine": Case(non_finite_affine, ("{subj}/lge.nii.gz", "affine")),
    "missing_lge": Case(missing_lge, ("{subj}/lge.nii.gz", "missing")),
    "missing_label": Case(missing_label, ("{subj}/lge_label.nii.gz", "missing")),
    "duplicate_ids": Case(duplicate_ids, ("duplicate subject id",)),
    "empty_dataset": Case(empty_dataset, ("{root}", "no subject folders")),
    "unreadable_file": Case(unreadable, ("{subj}/lge.nii.gz", "ermission denied"), drop_root_read=True),
    "absurd_dimensions": Case(absurd_dimensions, ("{subj}/cine.nii.gz", "absurd dimensions")),
    "no_cine_lge_overlap": Case(no_overlap, ("{subj}/lge.nii.gz", "does not overlap")),
    "yaml_python_tag": Case(python_tag_in_info_yaml, ("{subj}/info.yaml", "not valid YAML")),
    "missing_dataset_root": Case(nothing, ("data.root",), args=("--set", "data.root=")),
    # config values (the data step never starts: stderr is exactly the one line)
    "negative_epochs": Case(nothing, ("motion", "epochs must be > 0"), args=("--set", "motion.epochs=-1"),
                            strict_one_line=True),
    "wrong_type": Case(nothing, ("data.crop", "integer"), args=("--set", "data.crop=big"), strict_one_line=True),
    "wrong_type_bool": Case(nothing, ("deterministic", "true or false"), args=("--set", "deterministic=maybe"),
                            strict_one_line=True),
    "unknown_key": Case(nothing, ("unknown key data.fromat",), args=("--set", "data.fromat=generic"),
                        strict_one_line=True),
    "unknown_stage_section": Case(nothing, ("unknown key segmentaton",), args=("--set", "segmentaton.epochs=2"),
                                  strict_one_line=True),
    "unknown_format": Case(nothing, ("data.format", "must be one of"), args=("--set", "data.format=nrrd"),
                           strict_one_line=True),
    "bad_config_file": Case(nothing, ("bad.yaml", "epochs must be > 0"), args=("--config", "{bad_config}"),
                            strict_one_line=True),
    "yaml_python_tag_config": Case(nothing, ("evil.yaml", "not valid YAML"), args=("--config", "{evil_config}"),
                                   strict_one_line=True),
    "unknown_stage": Case(nothing, ("--stage", "invalid choice", "segmentaton"), args=("--stage", "segmentaton"),
                          strict_one_line=True),
}


@dataclass
class Outcome:
    done: subprocess.CompletedProcess[str]
    root: Path
    run: Path
    before: dict[str, str]
    after: dict[str, str]
    leftovers: list[Path]


def _snapshot(run: Path) -> dict[str, str]:
    files = [p for top in ("checkpoints", "data/cache", "data/splits") for p in sorted((run / top).rglob("*"))]
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def _command(case: Case, run: Path, root: Path, base: Path) -> list[str]:
    args = [a.format(bad_config=base / "bad.yaml", evil_config=base / "evil.yaml") for a in case.args]
    stage = [] if "--stage" in args else ["--stage", "data"]
    generic = ["--set", "data.format=generic", "--set", f"data.root={root}"] if case.generic else []
    if "--config" in args:
        cli = [*stage, "--run-dir", str(run), *generic, *args]
    else:
        cli = [*stage, "--config", TINY, "--run-dir", str(run), *generic, *args]
    command = [sys.executable, "-m", "mi_pipeline.train", *cli]
    if case.drop_root_read and os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        command = [SETPRIV, f"--inh-caps={caps}", f"--bounding-set={caps}", *command]  # type: ignore[list-item]
    return command


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, trained_run: Path) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("bad_inputs")
    (base / "bad.yaml").write_text("seed: 0\nthreads: 1\ndevice: cpu\nmotion:\n  epochs: -5\n")
    (base / "evil.yaml").write_text(f'seed: !!python/object/apply:os.system ["touch {base / "PWNED"}"]\n')
    jobs = {}
    for name, case in CASES.items():
        if case.drop_root_read and os.geteuid() == 0 and SETPRIV is None:
            continue
        run, root = base / name / "run", base / name / "dataset"
        shutil.copytree(trained_run, run, symlinks=True)
        shutil.copytree(trained_run / "data" / "phantom", root)
        case.plant(root)
        jobs[name] = (_command(case, run, root, base), run, root, _snapshot(run))

    def go(name: str) -> Outcome:
        command, run, root, before = jobs[name]
        done = subprocess.run(command, cwd=REPO, env=env(), text=True, capture_output=True, timeout=600)
        leftovers = [p for p in (run / "data").iterdir() if p.name.startswith(".cache.")] + harness.temp_files(run)
        return Outcome(done, root, run, before, _snapshot(run), leftovers)

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(jobs, pool.map(go, jobs)))
    results["__base__"] = base  # type: ignore[assignment]
    return results


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_clear_line_and_changes_nothing(name: str, outcomes: dict[str, Outcome]) -> None:
    case = CASES[name]
    if name not in outcomes:
        pytest.skip("running as root without setpriv: cannot make a file unreadable to root")
    out = outcomes[name]
    stderr = out.done.stderr
    assert out.done.returncode == 2, (out.done.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    line = errors[0]
    for fragment in case.fragments:
        expected = fragment.format(root=out.root, subj=f"{out.root}/{SUBJECT}")
        assert expected in line, f"{expected!r} not in {line!r}"
    if case.strict_one_line:
        assert stderr.strip().splitlines() == [line], stderr
    assert out.after == out.before, "checkpoints/ or the previous cache changed"
    assert not out.leftovers, f"left behind: {out.leftovers}"
    assert not (out.root.parent / "PWNED").exists() and not (outcomes["__base__"] / "PWNED").exists()  # type: ignore[operator]


def test_valid_generic_dataset_passes(tmp_path: Path, trained_run: Path) -> None:
    """Control: the untouched dataset through the same command succeeds (the failures above are the damage)."""
    run, root = tmp_path / "run", tmp_path / "dataset"
    shutil.copytree(trained_run, run, symlinks=True)
    shutil.copytree(trained_run / "data" / "phantom", root)
    done = subprocess.run(_command(Case(nothing, ()), run, root, tmp_path), cwd=REPO, env=env(), text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "data/cache/manifest.json").exists()
