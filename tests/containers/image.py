"""The podman image built by tests/containers/build_image.sh, for the tests marked ``image``.

:func:`require_image` skips a test when podman or the image is missing -- or FAILS it when
``MI_PIPELINE_REQUIRE_IMAGE=1`` (.ci/run sets it after building the image, so a broken build can
never turn into a green run of skipped tests; the same rule as MI_PIPELINE_REQUIRE_SLURM).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = os.environ.get("MI_IMAGE", f"localhost/mi_pipeline:{VERSION}-cpu")
REQUIRE_ENV = "MI_PIPELINE_REQUIRE_IMAGE"
BUILD_HINT = "run: bash tests/containers/build_image.sh (needs apt-get install podman runc debootstrap)"
CONTAINERS_CONF = str(REPO / "tests" / "containers" / "containers.conf")

#: What `scontrol requeue` needs inside a Debian 12 image on a Debian 12 host whose SLURM comes from
#: Debian's packages (slurm-client, munge): the binary, its library folder (libslurmfull, the
#: auth_munge plugin), libmunge, slurm.conf and the munge socket's folder.
SLURM_CLIENT_BINDS = ("/usr/bin/scontrol", "/usr/lib/x86_64-linux-gnu/slurm-wlm",
                      "/usr/lib/x86_64-linux-gnu/libmunge.so.2", "/etc/slurm/slurm.conf", "/run/munge")


def podman_env() -> dict[str, str]:
    """The environment podman needs on this kind of machine (CONTAINERS_CONF: cgroupfs, no ulimits)."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", CONTAINERS_CONF)
    return env


def podman(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env(),
                          check=False, **kwargs)


def _missing() -> str | None:
    if shutil.which("podman") is None:
        return f"podman not found ({BUILD_HINT})"
    found = podman("image", "exists", IMAGE, timeout=60)
    if found.returncode != 0:
        return f"no podman image {IMAGE} ({BUILD_HINT}) {found.stderr.strip()}".strip()
    return None


def require_image() -> str:
    reason = _missing()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return IMAGE


def package_digest(root: Path) -> str:
    """sha256 over the package's .py files (relative path + content), the same computation as in the image."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


DIGEST_SNIPPET = (
    "import hashlib, pathlib, mi_pipeline\n"
    "root = pathlib.Path(mi_pipeline.__file__).parent\n"
    "d = hashlib.sha256()\n"
    "for p in sorted(p for p in root.rglob('*.py') if '__pycache__' not in p.parts):\n"
    "    d.update(p.relative_to(root).as_posix().encode() + b'\\0' + p.read_bytes() + b'\\0')\n"
    "print(d.hexdigest())\n"
)
