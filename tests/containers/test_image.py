"""The real podman image (tests/containers/build_image.sh), run as its non-root user.

Marked ``image`` (deselected by default; .ci/run builds the image and runs ``-m image`` with
MI_PIPELINE_REQUIRE_IMAGE=1). How ids map (rootful podman, as in CI): there is no user namespace,
so an id inside the container is the same id on the host. The image runs as its user ``mi``
(uid/gid 1000); the invoking user (root: rootful podman needs it) makes the run folder and hands it
to 1000:1000 (``install -d -o 1000 -g 1000``), the pipeline writes into it as 1000:1000, and the
invoking user reads and deletes everything afterwards. (Rootless podman would instead map ``mi``
onto the invoking user with ``--userns=keep-id:uid=1000,gid=1000``; not run here.)

``MI_IMAGE_COMPARE_HOST=1`` runs the same demo on the host at the same time as in the image (same
config, seed and threads, started together so both see the same load on a shared machine), prints
the wall-time ratio image / host and checks the weights are bit-identical (docs/CLUSTER.md has the
numbers). ``MI_IMAGE_DEMO_SET="motion.epochs=1 ..."`` shortens the demo for a loaded machine (each
item becomes ``--set item``); CI sets it to fewer epochs (.ci/run) and not the comparison.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from tests.containers.image import (
    DIGEST_SNIPPET,
    REPO,
    package_digest,
    podman,
    require_image,
)
from tests.helpers import assert_same_weights, model_weights, run_module

pytestmark = [pytest.mark.image, pytest.mark.slow]
# Every run here uses --network=none: the pipeline needs no network, and the tests then need no
# container networking set up on the machine (the cluster jobs use --network=host).

IMAGE_UID = 1000  # the Dockerfile's `useradd --uid 1000 mi`

STAGES = ("motion", "registration", "segmentation")


@pytest.fixture(scope="module")
def image() -> str:
    return require_image()


def test_image_holds_this_checkouts_package(image: str) -> None:
    """Otherwise every other test here would test stale code: rebuild (build_image.sh) when this fails."""
    inside = podman("run", "--rm", "--network=none", "--entrypoint=python", image, "-c", DIGEST_SNIPPET)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.strip() == package_digest(REPO / "mi_pipeline"), \
        "the image's mi_pipeline differs from this checkout: run tests/containers/build_image.sh"


def test_help_runs_as_the_images_non_root_user(image: str) -> None:
    who = podman("run", "--rm", "--network=none", "--entrypoint=id", image)
    assert who.returncode == 0 and who.stdout.startswith("uid=1000(mi) gid=1000(mi)"), who.stdout + who.stderr
    result = podman("run", "--rm", "--network=none", image, "--help")  # python -m mi_pipeline --help: every command
    assert result.returncode == 0 and "usage: python -m mi_pipeline <command>" in result.stdout, result.stdout
    assert all(f"  {name}" in result.stdout for name in ("submit", "train", "status", "cancel", "predict")), result.stdout
    result = podman("run", "--rm", "--network=none", image, "submit", "--help")
    assert result.returncode == 0 and "--mode" in result.stdout, result.stdout + result.stderr


def make_run_dir(path: Path) -> Path:
    """A run folder made by the invoking user and handed to the image's user (rootful podman: ids map 1:1)."""
    if os.getuid() != 0:
        pytest.skip("rootful podman (as in CI) needs root; rootless podman is not set up here")
    path.mkdir()
    os.chown(path, IMAGE_UID, IMAGE_UID)
    return path


DEMO_SET = [a for item in os.environ.get("MI_IMAGE_DEMO_SET", "").split() for a in ("--set", item)]
DEMO_ARGS = ["submit", "--mode", "fresh", "--yes", "--executor", "local", *DEMO_SET]


def run_demo_in_image(image: str, run_dir: Path) -> float:
    started = time.monotonic()
    result = podman("run", "--rm", "--network=none", f"--volume={run_dir}:/work", image, *DEMO_ARGS,
                    "--config", "/opt/mi_pipeline/configs/demo.yaml", timeout=3000)
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return wall


def test_demo_end_to_end_in_the_image_and_the_host_user_owns_every_file(image: str, tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "demo")
    host = HostDemo(tmp_path / "host") if os.environ.get("MI_IMAGE_COMPARE_HOST") == "1" else None
    wall = run_demo_in_image(image, run_dir)
    assert (run_dir / ".training_progress").read_text().splitlines()[0] == "all_completed"
    report = json.loads(run_module("mi_pipeline.status", "--run-dir", str(run_dir), "--json").stdout)
    assert report["state"] == "all_completed", report
    for stage in STAGES:
        assert (run_dir / "checkpoints" / stage / "best_model.pth").is_file()
    print(f"demo in the image: {wall:.0f}s wall")
    if host is not None:
        compare_with_host(host, run_dir, wall)

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


class HostDemo(threading.Thread):
    """configs/demo.yaml on the host, in the background; ``wall`` is set when it ends."""

    def __init__(self, host_dir: Path) -> None:
        super().__init__(daemon=True)
        self.host_dir, self.wall, self.result = host_dir, float("nan"), None
        self.start()

    def run(self) -> None:
        started = time.monotonic()
        self.result = run_module("mi_pipeline", *DEMO_ARGS, "--config", str(REPO / "configs" / "demo.yaml"),
                                 "--run-dir", str(self.host_dir), timeout=3000)
        self.wall = time.monotonic() - started


def compare_with_host(host: HostDemo, image_dir: Path, image_wall: float) -> None:
    """The host demo started together with the image's: its wall time, the ratio, the same weights."""
    host.join(timeout=3000)
    assert host.result is not None and host.result.returncode == 0, host.result
    for stage in STAGES:
        assert_same_weights(model_weights(image_dir / "checkpoints" / stage / "last.pth"),
                            model_weights(host.host_dir / "checkpoints" / stage / "last.pth"))
    print(f"demo wall, started together: image {image_wall:.0f}s, host {host.wall:.0f}s; "
          f"ratio image/host {image_wall / host.wall:.2f}; weights of all three stages bit-identical")
