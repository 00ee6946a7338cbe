"""Run stage jobs inside an Apptainer/Singularity image: the ``container:`` config section.

The SLURM executor hands :func:`python_command` to submitit as ``AutoExecutor(slurm_python=...)``;
submitit then starts each stage job as ``<that command> -u -m submitit.core._submit <folder>``
inside the image, while the submitter itself runs outside it. The command is built from a list
with :func:`shlex.join` after every config value has been checked here, so nothing from a config
file reaches the job's shell unquoted.

What the job needs inside the image, and gets here: the same mi_pipeline (the image's), submitit
and cloudpickle (installed with the package), the run root (progress record, checkpoints, logs and
submitit's job folder), the config file's folder and ``data.root`` bound at the same paths, SLURM_*
variables (so no ``--cleanenv``), and ``--nv`` for the GPUs. What it needs from the site: ``scontrol``
on the PATH inside the image for submitit's requeue on USR2 (see docs/CLUSTER.md).

``runtime: podman`` (:func:`podman_command`) starts each job as ``podman run --rm ... --entrypoint
python IMAGE``, IMAGE an image name in the node's podman storage. podman passes no host environment
by itself, so SLURM_*, SUBMITIT_* and MI_PIPELINE_* are passed by name; its signal proxy (on by
default in the foreground) hands srun's USR2 to python, which is the container's first process.
The job runs as the submitting user (:func:`podman_user_args`), so files in the bound run root
belong to that user on the host and SLURM sees that user when the job requeues.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from mi_pipeline.config import Config
from mi_pipeline.errors import ConfigError

#: The Dockerfile's unprivileged user (``useradd --uid 1000``); rootless podman maps it to the submitter.
IMAGE_UID = 1000


def python_command(cfg: Config, run_dir: Path, extra_paths: Iterable[Path | str] = ()) -> str | None:
    """The ``slurm_python`` for submitit: ``apptainer exec [--nv] -B ... IMAGE python``, or None.

    None when ``container.image`` is empty (jobs run with the submitter's own interpreter).
    Bound automatically, each at its own path: ``run_dir``, the submitit job folder
    (``slurm.job_dir``, when outside the run root), ``data.root`` (when set) and ``extra_paths``
    (pass the config file's folder). Raises ConfigError when the image is missing or a path
    cannot be expressed as a bind mount.
    """
    c = cfg.container
    if not c.image:
        return None
    if c.runtime == "podman":
        return podman_command(cfg, run_dir, extra_paths)
    image = Path(c.image).expanduser().absolute()
    if not image.is_file():
        raise ConfigError(f"container.image: {image}: no such file (build it with 'apptainer build "
                          f"mi_pipeline.sif apptainer.def'; it must be on a filesystem the compute nodes see)")
    argv = [c.runtime, "exec"]
    if c.nv:
        argv.append("--nv")
    for bind in automatic_binds(cfg, run_dir, extra_paths):
        argv += ["-B", bind]
    argv += [*c.extra_args, str(image), "python"]
    return shlex.join(argv)


def automatic_binds(cfg: Config, run_dir: Path, extra_paths: Iterable[Path | str] = ()) -> list[str]:
    """Bind specs for a job: run root, job folder, data.root, ``extra_paths`` (each at its own path), then ``binds``."""
    c = cfg.container
    run_dir = Path(run_dir).absolute()
    wanted: list[Path] = [run_dir, run_dir / cfg.slurm.job_dir]
    if cfg.data.root:
        wanted.append(Path(cfg.data.root).expanduser())
    wanted += [Path(p) for p in extra_paths]

    binds: list[str] = []
    covered: list[Path] = []
    for path in wanted:
        path = path.absolute()
        if any(path == top or top in path.parents for top in covered):
            continue
        if ":" in str(path) or "," in str(path):
            raise ConfigError(f"container: cannot bind {path}: ':' and ',' in a path cannot be expressed in "
                              f"a {c.runtime} bind mount (rename the folder)")
        covered.append(path)
        binds.append(str(path))
    binds += [b for b in c.binds if b not in binds]
    return binds


def podman_user_args(host_uid: int | None = None, host_gid: int | None = None) -> list[str]:
    """``podman run`` options that make a job's files and SLURM requests the submitting user's.

    Rootless podman (``host_uid`` not 0): ``--userns=keep-id:uid=1000,gid=1000``, the image's user
    ``mi`` is the submitting user. Rootful podman (``host_uid`` 0, this project's CI): no user
    namespace, so ids inside are ids on the host, and ``--user=0:0`` runs the job as the submitter,
    root -- the only user whose ``scontrol requeue`` SLURM accepts for root's job. (Mapping the image
    user onto root with ``--uidmap`` fails on the CI machines' overlay storage: EACCES at mount.)
    """
    uid = os.getuid() if host_uid is None else host_uid
    gid = os.getgid() if host_gid is None else host_gid
    if uid != 0:
        return [f"--userns=keep-id:uid={IMAGE_UID},gid={IMAGE_UID}"]
    return [f"--user={uid}:{gid}"]


def check_podman_image(image: str) -> None:
    """Raise ConfigError unless podman runs here and has ``image`` in its storage."""
    podman = shutil.which("podman")
    if podman is None:
        raise ConfigError("container.runtime: podman is not on the PATH (apt-get install podman runc)")
    try:
        found = subprocess.run([podman, "image", "exists", image], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"container.image: could not ask podman for {image!r}: {exc}") from None
    if found.returncode == 1:
        raise ConfigError(f"container.image: podman has no image {image!r} (build it with "
                          f"tests/containers/build_image.sh or podman build; podman images lists what there is)")
    if found.returncode != 0:
        raise ConfigError(f"container.image: podman image exists {image!r} failed: "
                          f"{(found.stderr.strip().splitlines() or ['?'])[-1]}")


def podman_command(cfg: Config, run_dir: Path, extra_paths: Iterable[Path | str] = ()) -> str:
    """The ``slurm_python`` for ``runtime: podman``: ``podman run --rm ... --entrypoint python IMAGE``.

    The same folders as for apptainer are bound (``-v src:src``), the working directory is the run
    root, and the host network is used (the SLURM client, when bound in, talks to slurmctld).
    """
    c = cfg.container
    check_podman_image(c.image)
    argv = ["podman", "run", "--rm", "--network=host", *podman_user_args(),
            "--env=SLURM_*", "--env=SUBMITIT_*", "--env=MI_PIPELINE_*"]
    if c.nv:
        argv.append("--device=nvidia.com/gpu=all")
    for bind in automatic_binds(cfg, run_dir, extra_paths):
        src, _, rest = bind.partition(":")
        argv.append(f"--volume={src}:{rest or src}")
    argv += [f"--workdir={Path(run_dir).absolute()}", *c.extra_args, "--entrypoint=python", c.image]
    return shlex.join(argv)
