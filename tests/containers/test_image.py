"""The real podman image (tests/containers/build_image.sh), run as its non-root user.

Marked ``image`` (deselected by default; .ci/run builds the image and runs ``-m image`` with
MI_PIPELINE_REQUIRE_IMAGE=1). How ids map (rootful podman, as in CI): there is no user namespace,
so an id inside the container is the same id on the host. The image runs as its user ``mi``
(uid/gid 1000); the invoking user (root: rootful podman needs it) makes the run folder and hands it
to 1000:1000 (``install -d -o 1000 -g 1000``), the pipeline writes into it as 1000:1000, and the
invoking user reads and deletes everything afterwards. (Rootless podman would instead map ``mi``
onto the invoking user with ``--userns=keep-id:uid=1000,gid=1000``; not run here.)

``MI_IMAGE_COMPARE_HOST=1`` also runs the same demo on the host (same config, same seed, same
threads) and prints the wall-time ratio container / host (docs/CLUSTER.md has the numbers).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from tests.containers.image import DIGEST_SNIPPET, REPO, package_digest, podman, require_image
from tests.helpers import assert_same_weights, model_weights, run_module

pytestmark = [pytest.mark.image, pytest.mark.slow]

IMAGE_UID = 1000  # the Dockerfile's `useradd --uid 1000 mi`

STAGES = ("motion", "registration", "segmentation")


@pytest.fixture(scope="module")
def image() -> str:
    return require_image()


def test_image_holds_this_checkouts_package(image: str) -> None:
    """Otherwise every other test here would test stale code: rebuild (build_image.sh) when this fails."""
    inside = podman("run", "--rm", "--entrypoint=python", image, "-c", DIGEST_SNIPPET)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.strip() == package_digest(REPO / "mi_pipeline"), \
        "the image's mi_pipeline differs from this checkout: run tests/containers/build_image.sh"


def test_help_runs_as_the_images_non_root_user(image: str) -> None:
    who = podman("run", "--rm", "--entrypoint=id", image)
    assert who.returncode == 0 and who.stdout.startswith("uid=1000(mi) gid=1000(mi)"), who.stdout + who.stderr
    result = podman("run", "--rm", image, "--help")  # python -m mi_pipeline --help: usage on stderr
    assert result.returncode == 0 and "usage: python -m mi_pipeline {submit," in result.stderr, result.stderr
    result = podman("run", "--rm", image, "submit", "--help")
    assert result.returncode == 0 and "--mode" in result.stdout, result.stdout + result.stderr


def make_run_dir(path: Path) -> Path:
    """A run folder made by the invoking user and handed to the image's user (rootful podman: ids map 1:1)."""
    if os.getuid() != 0:
        pytest.skip("rootful podman (as in CI) needs root; rootless podman is not set up here")
    path.mkdir()
    os.chown(path, IMAGE_UID, IMAGE_UID)
    return path


def run_demo_in_image(image: str, run_dir: Path) -> float:
    started = time.monotonic()
    result = podman("run", "--rm", f"--volume={run_dir}:/work", image,
                    "submit", "--mode", "fresh", "--yes", "--executor", "local",
                    "--config", "/opt/mi_pipeline/configs/demo.yaml", timeout=1500)
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return wall


def test_demo_end_to_end_in_the_image_and_the_host_user_owns_every_file(image: str, tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "demo")
    wall = run_demo_in_image(image, run_dir)
    assert (run_dir / ".training_progress").read_text().splitlines()[0] == "all_completed"
    report = json.loads(run_module("mi_pipeline.status", "--run-dir", str(run_dir), "--json").stdout)
    assert report["state"] == "all_completed", report
    for stage in STAGES:
        assert (run_dir / "checkpoints" / stage / "best_model.pth").is_file()

    # On the host: every file the container wrote is 1000:1000 (the image user; ids map 1:1), and
    # the invoking user reads and deletes all of it.
    paths = list(run_dir.rglob("*"))
    assert len(paths) > 20, "the demo writes checkpoints, logs, splits and the phantom"
    foreign = [f"{p} {p.lstat().st_uid}:{p.lstat().st_gid}" for p in paths
               if (p.lstat().st_uid, p.lstat().st_gid) != (IMAGE_UID, IMAGE_UID)]
    assert not foreign, f"not written by the image user {IMAGE_UID}:{IMAGE_UID}: {foreign[:5]}"
    for path in paths:
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode):
            assert mode & stat.S_IRUSR, f"{path} not readable by its owner"
            path.read_bytes()
    shutil.rmtree(run_dir)
    assert not run_dir.exists()
    print(f"demo in the image: {wall:.0f}s wall")

    if os.environ.get("MI_IMAGE_COMPARE_HOST") == "1":
        compare_with_host(image, tmp_path, wall)


def compare_with_host(image: str, tmp_path: Path, first_wall: float) -> None:
    """Container and host alternately (container, host, container): the ratio, and the same weights."""
    host_dir, image_dir = tmp_path / "host", tmp_path / "image"
    make_run_dir(image_dir)
    started = time.monotonic()
    result = run_module("mi_pipeline.submit", "--mode", "fresh", "--yes", "--executor", "local",
                        "--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(host_dir), timeout=1500)
    host_wall = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    second_wall = run_demo_in_image(image, image_dir)
    for stage in STAGES:
        assert_same_weights(model_weights(image_dir / "checkpoints" / stage / "last.pth"),
                            model_weights(host_dir / "checkpoints" / stage / "last.pth"))
    mean = (first_wall + second_wall) / 2
    print(f"demo wall: image {first_wall:.0f}s and {second_wall:.0f}s, host {host_wall:.0f}s; "
          f"ratio image/host {mean / host_wall:.2f}; weights of all three stages bit-identical")


def test_docker_archive_of_the_image_feeds_the_apptainer_recipe(image: str, tmp_path: Path) -> None:
    """What runs here of apptainer.def variant (c): the archive and the def file made from it.
    `apptainer build` itself does not (no apptainer on these machines; docs/CLUSTER.md)."""
    import subprocess
    import tarfile

    from tests.containers.test_recipes import DEF_FILE, def_header, parse_with_spython

    archive = tmp_path / "mi_pipeline-0.1.0.tar"
    saved = podman("save", "--format", "docker-archive", "-o", str(archive), image, timeout=600)
    assert saved.returncode == 0, saved.stderr
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        names = set(tar.getnames())
    assert manifest[0]["RepoTags"] == [image] and set(manifest[0]["Layers"]) <= names, manifest
    config = json.loads(tarfile.open(archive).extractfile(manifest[0]["Config"]).read())
    assert config["config"]["User"] == "1000:1000"
    assert config["config"]["Entrypoint"] == ["python", "-m", "mi_pipeline"]
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == "0.1.0"
    shutil.copy(DEF_FILE, tmp_path / "apptainer.def")
    sed = ["sed", "-e", "s|^Bootstrap: docker-daemon$|Bootstrap: docker-archive|",
           "-e", "s|^From: .*|From: mi_pipeline-0.1.0.tar|", "apptainer.def"]
    for expression in (sed[2], sed[4]):
        assert f"'{expression}'" in DEF_FILE.read_text(), f"not apptainer.def's recipe (c): {expression}"
    (tmp_path / "mi_pipeline-archive.def").write_text(subprocess.run(sed, cwd=tmp_path, capture_output=True,
                                                                     text=True, check=True).stdout)
    header = def_header((tmp_path / "mi_pipeline-archive.def").read_text())
    assert header == {"bootstrap": "docker-archive", "from": archive.name} and (tmp_path / header["from"]).is_file()
    assert parse_with_spython(tmp_path / "mi_pipeline-archive.def").cmd == 'exec python -m mi_pipeline "$@"'
    print(f"docker-archive {archive.stat().st_size / 1e6:.0f} MB")
