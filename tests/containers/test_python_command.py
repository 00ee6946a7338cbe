"""The ``container:`` config section and the submitit python command built from it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from mi_pipeline.config import load_config
from mi_pipeline.errors import ConfigError
from mi_pipeline.orchestration.container import python_command

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "images dir" / "mi_pipeline.sif"
    path.parent.mkdir()
    path.write_bytes(b"SIF")
    return path


def cfg_with(*overrides: str):
    return load_config(TINY, list(overrides))


def test_no_image_means_no_container() -> None:
    assert python_command(cfg_with(), Path("/scratch/run1")) is None


def test_command_binds_run_root_data_and_config_folder(image: Path, tmp_path: Path) -> None:
    cfg = cfg_with(f"container.image={image}", "data.root=/data/cmr", 'container.binds=["/scratch/ref:/ref:ro"]',
                   'container.extra_args=["--env=OMP_NUM_THREADS=8"]')
    command = python_command(cfg, tmp_path / "run1", [REPO / "tests" / "configs"])
    argv = shlex.split(command)
    assert argv[:3] == ["apptainer", "exec", "--nv"]
    assert argv[-2:] == [str(image), "python"], "the image path (with a space) stays one word"
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "-B"]
    assert binds == [str(tmp_path / "run1"), "/data/cmr", str(REPO / "tests" / "configs"), "/scratch/ref:/ref:ro"]
    assert "--env=OMP_NUM_THREADS=8" in argv
    # submitit appends "-u -m submitit.core._submit FOLDER": the result must stay a valid prefix
    assert shlex.split(command + " -u -m submitit.core._submit /x")[-4:] == ["-u", "-m", "submitit.core._submit", "/x"]


def test_job_folder_outside_the_run_root_is_bound_and_nested_paths_are_not_repeated(image: Path) -> None:
    cfg = cfg_with(f"container.image={image}", "slurm.job_dir=/scratch/jobs", "container.nv=false",
                   "container.runtime=singularity")
    argv = shlex.split(python_command(cfg, Path("/scratch/run1"), ["/scratch/run1/configs"]))
    assert argv[:2] == ["singularity", "exec"] and "--nv" not in argv
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-B"] == ["/scratch/run1", "/scratch/jobs"]


def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    cfg = cfg_with(f"container.image={tmp_path / 'nope.sif'}")
    with pytest.raises(ConfigError, match="nope.sif: no such file"):
        python_command(cfg, tmp_path)


def test_unbindable_path_is_refused(image: Path) -> None:
    with pytest.raises(ConfigError, match="cannot bind"):
        python_command(cfg_with(f"container.image={image}"), Path("/scratch/a,b"))


@pytest.mark.parametrize("override, message", [
    ('container.binds=["data:/data"]', "absolute"),
    ('container.binds=["/a,/b"]', "one mount"),
    ('container.binds=["/a:/b:rx"]', "ro|rw"),
    ('container.extra_args=["--cleanenv"]', "SLURM_"),
    ('container.extra_args=["-e"]', "SLURM_"),
    ('container.extra_args=["nv"]', "starting with '-'"),
    ("container.image=docker://pytorch/pytorch", "local .sif"),
    ("container.image=--nv", "path to a .sif"),
    ("container.runtime=docker", "apptainer | singularity | podman"),
    ("container.nv=yes please", "true or false"),
])
def test_bad_values_are_config_errors_naming_the_key(override: str, message: str) -> None:
    overrides = [override] if "image=" in override else ["container.image=/x/img.sif", override]
    with pytest.raises(ConfigError, match="container") as info:
        cfg_with(*overrides)
    assert message in str(info.value)


def test_binds_without_image_are_refused() -> None:
    with pytest.raises(ConfigError, match="image is empty"):
        cfg_with('container.binds=["/data"]')


def test_container_section_in_yaml(tmp_path: Path, image: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text(TINY.read_text() + f"container:\n  image: {image}\n  binds: [/data/cmr]\n  nv: true\n")
    cfg = load_config(config)
    assert cfg.container.image == str(image) and cfg.container.binds == ("/data/cmr",)
    assert "-B /data/cmr" in python_command(cfg, tmp_path / "run")


def test_site_config_example_in_the_cluster_docs_is_valid(tmp_path: Path) -> None:
    text = (REPO / "docs" / "CLUSTER.md").read_text()
    block = next(b for b in text.split("```yaml\n")[1:] if b.startswith("# site.yaml"))
    config = tmp_path / "site.yaml"
    config.write_text(block.split("```", 1)[0])
    cfg = load_config(config)
    assert cfg.slurm.for_stage("data")["gpus_per_node"] == 0 and cfg.slurm.for_stage("segmentation")["time_min"] == 1440
    assert cfg.container.image.endswith(".sif") and cfg.container.nv


# --------------------------------------------------------------------------------------------
# runtime: podman (the command only; tests/containers/test_image.py runs it for real)
# --------------------------------------------------------------------------------------------

PODMAN = ["container.runtime=podman", "container.image=localhost/mi_pipeline:0.1.0-cpu", "container.nv=false"]


@pytest.fixture
def podman_has_every_image(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    asked: list[str] = []
    monkeypatch.setattr("mi_pipeline.orchestration.container.check_podman_image", asked.append)
    return asked


def test_podman_command_runs_the_image_python_with_binds_env_and_user(podman_has_every_image, tmp_path) -> None:
    cfg = cfg_with(*PODMAN, "data.root=/data/cmr", 'container.binds=["/usr/bin/scontrol", "/scratch/ref:/ref:ro"]')
    command = python_command(cfg, tmp_path / "run1", [REPO / "tests" / "configs"])
    assert podman_has_every_image == ["localhost/mi_pipeline:0.1.0-cpu"], "the image is checked before submitting"
    argv = shlex.split(command)
    assert argv[:3] == ["podman", "run", "--rm"]
    assert argv[-2:] == ["--entrypoint=python", "localhost/mi_pipeline:0.1.0-cpu"], "submitit appends -u -m ..."
    volumes = [a.split("=", 1)[1] for a in argv if a.startswith("--volume=")]
    run1 = str(tmp_path / "run1")
    assert volumes == [f"{run1}:{run1}", "/data/cmr:/data/cmr", f"{REPO}/tests/configs:{REPO}/tests/configs",
                       "/usr/bin/scontrol:/usr/bin/scontrol", "/scratch/ref:/ref:ro"]
    assert {"--env=SLURM_*", "--env=SUBMITIT_*", "--network=host", f"--workdir={run1}"} <= set(argv)
    from mi_pipeline.orchestration.container import podman_user_args
    assert podman_user_args()[0] in argv[:argv.index("--entrypoint=python")], "the job runs as the submitter"
    assert "'--env=SLURM_*'" in command, "quoted: the sbatch script's shell must not expand it"
    assert not any(a.startswith("--device") for a in argv), "nv=false: no GPU device"
    assert not any(a.startswith(("-d", "--detach", "--sig-proxy")) for a in argv), "srun's USR2 must reach python"


def test_podman_nv_asks_for_every_gpu_through_cdi(podman_has_every_image, tmp_path) -> None:
    cfg = cfg_with(*PODMAN[:2], "container.nv=true")
    assert "--device=nvidia.com/gpu=all" in shlex.split(python_command(cfg, tmp_path))


def test_podman_jobs_run_as_the_submitting_user() -> None:
    from mi_pipeline.orchestration.container import podman_user_args

    assert podman_user_args(0, 0) == ["--user=0:0"], "rootful podman: ids inside are host ids"
    assert podman_user_args(1234, 1234) == ["--userns=keep-id:uid=1000,gid=1000"], "rootless: image user = submitter"


@pytest.mark.parametrize("override, message", [
    ("container.image=/images/mi_pipeline.sif", "podman image name"),
    ("container.image=Mi_Pipeline:latest", "podman image name"),
    ("container.image=docker://mi_pipeline", "podman image name"),
    ("container.image=--privileged", "podman image name"),
    ('container.extra_args=["--detach"]', "USR2"),
    ('container.extra_args=["--sig-proxy=false"]', "USR2"),
])
def test_bad_podman_values_are_config_errors_naming_the_key(override: str, message: str) -> None:
    overrides = ["container.runtime=podman", override]
    if "image=" not in override:
        overrides.insert(1, "container.image=localhost/mi_pipeline:0.1.0-cpu")
    with pytest.raises(ConfigError, match="container") as info:
        cfg_with(*overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("image, message", [
    ("localhost/no-such-image:1", "container.image: podman has no image 'localhost/no-such-image:1'"),
    ("Not_An_Image", "podman image name"),
])
def test_submit_with_a_bad_podman_image_stops_with_one_line_naming_the_key(tmp_path: Path, image: str,
                                                                           message: str) -> None:
    """Through the real CLI and the real podman (no image needed): nothing is submitted."""
    from tests.containers.conftest import require_tool
    from tests.helpers import run_module

    require_tool("podman")
    result = run_module("mi_pipeline.submit", "--config", str(TINY), "--run-dir", str(tmp_path / "run"),
                        "--executor", "slurm", "--mode", "resume", "--set", "container.runtime=podman",
                        "--set", f"container.image={image}", "--set", "container.nv=false", timeout=120,
                        extra_env={"CONTAINERS_CONF": str(REPO / "tests" / "containers" / "containers.conf")})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "container" in lines[0], result.stderr
    assert "submitted job" not in result.stdout
