"""Disk full: the run root on a small tmpfs the test mounts (needs root and mount permission; skipped
with the reason otherwise, and a failure under CI=true where mounting works but the test cannot run).

A real motion stage (tiny config) is stopped by SIGUSR2 mid-run, the disk is filled to leave less than
one checkpoint of space, and resume is run: it must fail with one clear line, leave last.pth and
best_model.pth intact and loadable, and after space is freed resume must finish with the same weights
as a run that never stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.fsio import SLOW_WRITE_ENV
from tests.faults import harness
from tests.faults.conftest import TINY, cli
from tests.faults.test_corrupted_state import one_error_line
from tests.helpers import REPO, checkpoint_epoch, env, wait_for

EPOCHS = "motion.epochs=6"


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("disk-full test mounts a tmpfs: needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): "
                    "run as root with CAP_SYS_ADMIN to exercise a full disk")


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    _mount_tmpfs(where, "24m")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    filler = disk / "filler.bin"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as handle:
        remaining = max(0, free - leave_bytes)
        while remaining > 0:
            chunk = min(remaining, 1 << 20)
            handle.write(b"\0" * chunk)
            remaining -= chunk
    return filler


def test_disk_full_fails_clearly_keeps_checkpoints_and_resume_finishes(small_disk: Path, prepared_run: Path,
                                                                        tmp_path: Path) -> None:
    motion = ("--stage", "motion", "--config", TINY, "--set", EPOCHS)
    reference = tmp_path / "reference"
    shutil.copytree(prepared_run, reference, symlinks=True)
    assert cli("train", *motion, "--run-dir", str(reference)).returncode == 0

    run = small_disk / "run"
    shutil.copytree(prepared_run, run, symlinks=True)
    last, best = run / "checkpoints/motion/last.pth", run / "checkpoints/motion/best_model.pth"
    slow = {**env(), SLOW_WRITE_ENV: "0.5"}  # test-only hook: room to stop it mid-run
    proc = subprocess.Popen([sys.executable, "-m", "mi_pipeline.train", *motion, "--run-dir", str(run)], cwd=REPO,
                            env=slow, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: checkpoint_epoch(last) >= 2, 300, "epoch 2 of motion", proc)
    proc.send_signal(signal.SIGUSR2)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    stopped_at = checkpoint_epoch(last)
    assert 2 <= stopped_at < 6

    before = last.read_bytes()
    filler = _fill(small_disk, leave_bytes=len(before) // 3)  # not enough for one more last.pth
    done = cli("train", *motion, "--run-dir", str(run))
    line = one_error_line(done, "no space left on device")
    assert "checkpoints/motion" in line or "training_progress" in line or "logs/motion" in line, line
    assert last.read_bytes() == before, "last.pth must be untouched by the failed write"
    ckpt.load_checkpoint(last)
    ckpt.load_checkpoint(best)
    assert not harness.temp_files(run), "a failed write left its temp file"

    filler.unlink()
    done = cli("train", *motion, "--run-dir", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("last.pth", "best_model.pth"):
        assert harness.same_weights(harness.weights(run / "checkpoints/motion" / name),
                                    harness.weights(reference / "checkpoints/motion" / name)), name


def test_mount_works_or_skip_is_honest_under_ci(tmp_path: Path) -> None:
    """Under CI=true a skip of the disk-full test must be for a real reason, not a broken helper."""
    where = tmp_path / "probe"
    _mount_tmpfs(where, "1m")
    try:
        (where / "x").write_bytes(b"1" * 4096)
        with pytest.raises(OSError):
            (where / "y").write_bytes(b"1" * (2 << 20))
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_completely_full_disk_is_one_line_and_changes_nothing(small_disk: Path, trained_run: Path) -> None:
    """Not a byte left: the first write of the stage (the progress record) fails, still one clear line."""
    run = small_disk / "run"
    shutil.copytree(trained_run, run, symlinks=True)
    last = run / "checkpoints/motion/last.pth"
    before = last.read_bytes()
    filler = _fill(small_disk, leave_bytes=0)
    with open(filler, "ab", buffering=0) as handle:  # take what is left, down to the last byte
        for size in (1 << 16, 4096, 512, 64, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass
    assert shutil.disk_usage(small_disk).free == 0
    done = cli("train", "--stage", "motion", "--config", TINY, "--set", "motion.epochs=3", "--run-dir", str(run))
    print(done.stderr[-1500:])
    one_error_line(done, "No space left on device")
    assert last.read_bytes() == before
    ckpt.load_checkpoint(run / "checkpoints/motion/best_model.pth")
    assert not harness.temp_files(run)
