"""What runs code as the user (job pickles, sbatch scripts) is written by the user alone.

submitit unpickles a job's ``*_submitted.pkl`` at every start and requeue, and sbatch runs the
script it is given: a group member who can write either (umask 002 is common on shared project
filesystems) can run code as the job's owner. So such files are written under umask 077 (files
0600) into a folder set to 0700, whatever the user's umask.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

OWNER_ONLY_DIR = 0o700
OWNER_ONLY_UMASK = 0o077


@contextlib.contextmanager
def owner_only(folder: Path) -> Iterator[Path]:
    """``folder`` made (parents too) and set to 0700; new files and folders owner-only inside the block.

    The umask is the process's: the submitter writes nothing else while it submits.
    """
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, OWNER_ONLY_DIR)
    previous = os.umask(OWNER_ONLY_UMASK)
    try:
        yield folder
    finally:
        os.umask(previous)


def sbatch_path(path: Path, pattern: str = "") -> str:
    """An ``#SBATCH --output`` value: ``path`` with its ``%`` escaped (SLURM reads ``%`` as a pattern),
    then ``pattern`` (``%A_%a.out``: meant as one), quoted for a path with spaces."""
    import shlex

    return shlex.quote(str(path).replace("%", "%%") + pattern)
