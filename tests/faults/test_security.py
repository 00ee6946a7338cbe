"""Security basics, checked on the code and on real files:
- checkpoints only through torch.load(weights_only=True) (a code-running pickle: test_corrupted_state.py);
- YAML only through the safe loader (configs and info.yaml: a python tag is an error, never run);
- subject ids and data paths cannot leave the dataset root ('..', absolute paths, symbolic links) and
  cache files stay under <run>/data/cache;
- no shell: commands (SLURM, containers, local executor) are argument lists, never shell strings;
- nothing executable from data a run stores: a checkpoint's slurm/container settings never reach an
  sbatch script; job pickles and scripts are the owner's alone whatever the umask; output paths with
  spaces or '%' cannot change what SLURM does.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mi_pipeline.config import load_config
from mi_pipeline.data import generic
from mi_pipeline.errors import ConfigError, InputError
from tests.helpers import REPO, env

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


def _fake_sbatch(tmp_path: Path) -> Path:
    """A folder with an ``sbatch`` that keeps a copy of the script it is given (and its mode) and
    answers like sbatch does; ``sacct``/``squeue`` that know no job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
for last; do :; done
cp "$last" {tmp_path}/sbatch_script
stat -c %a "$last" > {tmp_path}/sbatch_script_mode
case "$1" in --parsable) echo 4242 ;; *) echo "Submitted batch job 4242" ;; esac
""")
    for name in ("sacct", "squeue", "srun"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def test_a_checkpoint_cannot_put_shell_lines_into_the_cohort_array(tmp_path: Path) -> None:
    """predict --cohort --executor slurm without --config: the config stored in best_model.pth picks
    the models, never the sbatch options, setup lines or image; the script is written 0600 and its
    logs folder 0700 under umask 002."""
    from tests.test_inference import TINY, save_untrained

    image = tmp_path / "evil.sif"
    image.write_bytes(b"")
    planted = load_config(TINY, ['slurm.setup=["touch /tmp/PWNED"]', 'slurm.extra=["chdir=/tmp/evil"]',
                                 f"container.image={image}"])
    save_untrained(planted, tmp_path / "run" / "checkpoints")
    (tmp_path / "cines").mkdir()
    (tmp_path / "cines" / "a.nii.gz").write_bytes(b"x")
    bin_dir = _fake_sbatch(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "mi_pipeline.predict", "--cohort", "--cine", str(tmp_path / "cines"), "--out",
         str(tmp_path / "out"), "--run-dir", str(tmp_path / "run"), "--executor", "slurm"],
        env={**env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, text=True, capture_output=True,
        timeout=300, preexec_fn=lambda: os.umask(0o002))
    assert done.returncode == 0, done.stderr
    script = (tmp_path / "sbatch_script").read_text()
    assert "PWNED" not in script and "/tmp/evil" not in script and str(image) not in script
    assert "note: the config stored in the checkpoint chooses the models only" in done.stderr
    assert (tmp_path / "sbatch_script_mode").read_text().strip() == "600"
    assert stat.S_IMODE((tmp_path / "out" / ".cohort" / "logs").stat().st_mode) == 0o700
    (tmp_path / "run" / "config.yaml").write_text("slurm:\n  partition: site\n")  # the run's own config file
    again = subprocess.run(done.args, env={**env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, text=True,
                           capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    script = (tmp_path / "sbatch_script").read_text()
    assert "#SBATCH --partition=site" in script and "PWNED" not in script and "note:" not in again.stderr


def test_sbatch_output_paths_with_spaces_or_percent_are_quoted_and_escaped(tmp_path: Path) -> None:
    from mi_pipeline.orchestration.cohort_jobs import array_script
    from mi_pipeline.orchestration.slurm_executor import job_folder

    logs = tmp_path / "my runs" / "50%x" / ".cohort" / "logs"
    script = array_script(["/usr/bin/python3", "-m", "mi_pipeline.predict"], 2, load_config(None), logs, 0)
    assert f"#SBATCH --output='{tmp_path}/my runs/50%%x/.cohort/logs/%A_%a.out'" in script.splitlines()
    with pytest.raises(Exception, match="'%'"):
        job_folder(tmp_path / "50%x", load_config(None))
    assert job_folder(tmp_path / "my run", load_config(None)) == tmp_path / "my run" / "logs" / "slurm" / "%j"


def test_stage_job_pickles_and_scripts_are_owner_only_whatever_the_umask(tmp_path: Path, monkeypatch) -> None:
    """submitit unpickles a job's pickle at every start and requeue: under umask 002 it and its folder
    must still be the owner's alone (real submitit, a stand-in sbatch)."""
    from mi_pipeline.orchestration import slurm_executor, slurm_resources
    from mi_pipeline.orchestration.local_executor import StageCommand
    from mi_pipeline.orchestration.plan import Step
    from mi_pipeline.orchestration.progress import ProgressFile

    monkeypatch.setenv("PATH", f"{_fake_sbatch(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(slurm_resources, "cluster_partitions", lambda: None)
    run = tmp_path / "run"
    run.mkdir()
    previous = os.umask(0o002)
    try:
        jobs = slurm_executor.run_slurm([Step("data", True, "test")], StageCommand(None, (), run), ProgressFile(run),
                                        load_config(None))
    finally:
        os.umask(previous)
    assert jobs == {"data": "4242"}
    job_root = run / "logs" / "slurm"
    written = [job_root, *job_root.rglob("*")]
    assert any(p.name.endswith("_submitted.pkl") for p in written)
    assert {p.relative_to(run).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in written
            if stat.S_IMODE(p.stat().st_mode) & 0o077} == {}
    assert (tmp_path / "sbatch_script_mode").read_text().strip() == "600"
    assert stat.S_IMODE(os.stat(run / ".training_progress").st_mode) & 0o044  # the record stays shared
