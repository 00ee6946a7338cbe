"""Security basics, checked on the code and on real files:
- checkpoints only through torch.load(weights_only=True) (a code-running pickle: test_corrupted_state.py);
- YAML only through the safe loader (configs and info.yaml: a python tag is an error, never run);
- subject ids and data paths cannot leave the dataset root ('..', absolute paths, symbolic links) and
  cache files stay under <run>/data/cache;
- no shell: commands (SLURM, containers, local executor) are argument lists, never shell strings.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from mi_pipeline.config import load_config
from mi_pipeline.data import generic
from mi_pipeline.errors import ConfigError, InputError
from tests.helpers import REPO

SOURCES = sorted((REPO / "mi_pipeline").rglob("*.py"))


def _code(path: Path) -> str:
    """Source without comments and docstrings-ish lines (good enough for these greps)."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())


def _hits(pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [f"{p.relative_to(REPO)}:{i + 1}: {line.strip()}" for p in SOURCES
            for i, line in enumerate(_code(p).splitlines()) if regex.search(line)]


def test_no_shell_strings_anywhere() -> None:
    assert not _hits(r"shell\s*=\s*True"), _hits(r"shell\s*=\s*True")
    assert not _hits(r"\bos\.(system|popen|exec[lv]p?e?)\s*\("), _hits(r"\bos\.(system|popen)\s*\(")
    assert not _hits(r"subprocess\.(getoutput|getstatusoutput)"), "shell helpers"
    bare = r"(?<![.\w])(eval|exec)\s*\("  # the builtins, not model.eval()
    assert not _hits(bare), _hits(bare)


def test_every_subprocess_call_gets_an_argument_list() -> None:
    calls = _hits(r"subprocess\.(run|call|check_call|check_output|Popen)\(")
    for call in calls:
        argument = call.split("(", 1)[1].strip()
        assert argument.startswith(("[", "command.argv", "argv", "cmd", "command")), call


def test_yaml_only_through_the_safe_loader() -> None:
    unsafe = _hits(r"yaml\.(load|unsafe_load|full_load|load_all)\s*\(|yaml\.(Full|Unsafe)?Loader\b")
    assert not unsafe, unsafe
    assert _hits(r"yaml\.safe_load\("), "expected safe_load to be what reads YAML"


def test_checkpoints_only_through_weights_only_loads() -> None:
    loads = _hits(r"torch\.load\(")
    assert loads, "torch.load disappeared: update this test"
    for call in loads:
        assert "weights_only=True" in call, call
    assert not _hits(r"\bpickle\.loads?\(|\bdill\.|\bcloudpickle\.loads?\("), "unpickling outside torch.load"
    for call in _hits(r"np\.load\("):
        assert "allow_pickle=False" in call, call


def test_config_yaml_python_tag_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(path)
    assert not marker.exists()


@pytest.fixture
def dataset(tmp_path: Path, prepared_run: Path) -> Path:
    root = tmp_path / "dataset"
    root.mkdir()
    shutil.copytree(prepared_run / "data/phantom/phantom_001", root / "s1")
    return root


@pytest.mark.parametrize("name", ["..x", "-rf", "a b", "a;b", "$(id)", "s1\\..\\x", "é"])
def test_subject_folder_names_must_be_plain(dataset: Path, name: str) -> None:
    (dataset / name).mkdir()
    if name.startswith("."):  # hidden entries (., .., .x) are never subjects
        assert generic.list_subjects(dataset) == ["s1"]
        return
    with pytest.raises(InputError, match="unsafe subject folder name"):
        generic.list_subjects(dataset)


def test_symlinked_subject_folder_out_of_the_root_is_refused(dataset: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.copytree(dataset / "s1", outside)
    (dataset / "s2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InputError, match="leaves the dataset root"):
        generic.load_subject(dataset, "s2")


def test_symlinked_file_out_of_the_root_is_refused(dataset: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.nii.gz"
    shutil.copy(dataset / "s1/lge.nii.gz", secret)
    (dataset / "s1/lge.nii.gz").unlink()
    (dataset / "s1/lge.nii.gz").symlink_to(secret)
    with pytest.raises(InputError, match="leaves the dataset root"):
        generic.load_subject(dataset, "s1")


def test_symlinks_inside_the_root_are_fine(dataset: Path) -> None:
    (dataset / "store").mkdir()  # a site keeping files once and linking them into subject folders
    shutil.move(dataset / "s1/lge.nii.gz", dataset / "store/lge.nii.gz")
    (dataset / "s1/lge.nii.gz").symlink_to(dataset / "store/lge.nii.gz")
    assert generic.load_subject(dataset, "s1").lge.ndim == 3


def test_cache_files_stay_under_the_run(tmp_path: Path) -> None:
    from mi_pipeline.data import cache

    for sid in generic.list_subjects(_make(tmp_path, ["a.1", "B-2", "c_3"])):
        path = cache.cache_dir(tmp_path / "run") / f"{sid}.npz"
        assert path.resolve().is_relative_to((tmp_path / "run" / "data" / "cache").resolve())


def _make(tmp_path: Path, names: list[str]) -> Path:
    root = tmp_path / "ids"
    for name in names:
        (root / name).mkdir(parents=True)
    return root
