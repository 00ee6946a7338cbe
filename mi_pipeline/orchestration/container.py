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
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path

from mi_pipeline.config import Config
from mi_pipeline.errors import ConfigError


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
    image = Path(c.image).expanduser().absolute()
    if not image.is_file():
        raise ConfigError(f"container.image: {image}: no such file (build it with 'apptainer build "
                          f"mi_pipeline.sif apptainer.def'; it must be on a filesystem the compute nodes see)")
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
                              f"'{c.runtime} exec -B' (rename the folder)")
        covered.append(path)
        binds.append(str(path))
    binds += [b for b in c.binds if b not in binds]

    argv = [c.runtime, "exec"]
    if c.nv:
        argv.append("--nv")
    for bind in binds:
        argv += ["-B", bind]
    argv += [*c.extra_args, str(image), "python"]
    return shlex.join(argv)
