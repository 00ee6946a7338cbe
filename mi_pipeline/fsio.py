"""Crash-safe file writes: the only way this package replaces a file that must survive a crash.

A reader sees either the old complete file or the new complete file, never a torn one:
write to a temp file in the same directory, fsync it, rename it over the target, fsync the directory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# TEST-ONLY hook, never set it in production: seconds to sleep inside every atomic write (half after the
# temp file is created, half after it is written, before fsync + rename), so fault-injection tests
# (tests/faults/) can land kill -9 inside a checkpoint write instead of only between writes.
SLOW_WRITE_ENV = "MI_PIPELINE_TEST_SLOW_WRITE_S"


def _test_slow_write() -> None:
    value = os.environ.get(SLOW_WRITE_ENV)
    if value:
        time.sleep(float(value) / 2)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on clean exit it replaces ``target`` atomically.

    On error the temp file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, _mode_from_umask())  # mkstemp makes it 0600: a colleague in the group could not read it
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _test_slow_write()
        yield tmp
        _test_slow_write()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _mode_from_umask() -> int:
    """0666 less the process umask: what ``open()`` would give a new file (group-readable under 022/002).

    The umask is read from /proc (reading it with ``os.umask`` means setting it for a moment, which
    a checkpoint thread writing at the same time would see); elsewhere it is read once at import.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o666 & ~_IMPORT_UMASK


def _read_umask_once() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _read_umask_once()


def stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Temp files ``atomic_path`` left beside ``target`` when its process died mid-write (kill -9, power loss)."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    return sorted(target.parent.glob(f".{glob_escape(target.name)}.*.tmp"))


def remove_stale_temps(target: str | os.PathLike[str]) -> int:
    """Delete ``stale_temps(target)``. Call it only where no other process may be writing ``target``
    (the stage's own trainer, or under the lock that guards ``target``). Returns how many were removed."""
    removed = 0
    for path in stale_temps(target):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))
