"""Corrupted state through the real CLIs: damaged checkpoints, a code-running pickle, broken or
hand-written progress records, symlinked progress and lock files. Nothing is trusted blindly, nothing
is executed, nothing outside the run is written, and every refusal is one line naming the file."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.errors import CheckpointError, UserError
from mi_pipeline.orchestration.progress import FILENAME, ProgressFile
from tests.faults.conftest import TINY, cli

MOTION = ("--config", TINY, "--set", "motion.epochs=2")


def one_error_line(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The CLI contract: exit 2, exactly one 'error:' line on stderr naming what is wrong, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zero_fill(path: Path) -> None:
    path.write_bytes(b"\0" * path.stat().st_size)


def bit_flip(path: Path, seed: int = 0) -> None:
    """Flip one bit inside the largest tensor record: the damage torch.load alone does not notice."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    # a stored member's data starts after its 30-byte local header, name and extra field
    header = data[info.header_offset: info.header_offset + 30]
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    position = start + random.Random(seed).randrange(info.compress_size)
    data[position] ^= 0x10
    path.write_bytes(bytes(data))


CORRUPTIONS = {"truncated": truncate, "zero-filled": zero_fill, "bit-flipped": bit_flip}


@pytest.fixture
def run(tmp_path: Path, trained_run: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(trained_run, target, symlinks=True)
    return target


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupted_last_pth_stops_resume_with_one_line(run: Path, kind: str) -> None:
    last = run / "checkpoints/motion/last.pth"
    CORRUPTIONS[kind](last)
    damaged = last.read_bytes()
    best = (run / "checkpoints/motion/best_model.pth").read_bytes()
    done = cli("train", "--stage", "motion", *MOTION, "--run-dir", str(run))
    one_error_line(done, str(last))
    assert last.read_bytes() == damaged, "the damaged file must be kept for the user, not overwritten"
    assert (run / "checkpoints/motion/best_model.pth").read_bytes() == best


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupted_best_model_is_retrained_by_skip(run: Path, kind: str) -> None:
    best = run / "checkpoints/motion/best_model.pth"
    CORRUPTIONS[kind](best)
    with pytest.raises(CheckpointError, match="best_model.pth"):
        ckpt.load_checkpoint(best)
    done = cli("submit", "--mode", "skip", "--dry-run", "--executor", "local", *MOTION, "--run-dir", str(run))
    assert done.returncode == 0, done.stderr
    motion = [line for line in done.stdout.splitlines() if " motion " in f" {line} "]
    assert motion and motion[0].split()[0] == "restart" and "corrupted" in motion[0], done.stdout


def test_skip_mode_step_retrains_a_bit_flipped_best_model(run: Path) -> None:
    """What the skip plan runs for that stage (train --restart): a loadable best_model.pth again."""
    best = run / "checkpoints/motion/best_model.pth"
    bit_flip(best, seed=3)
    done = cli("train", "--stage", "motion", *MOTION, "--run-dir", str(run), "--restart")
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt.load_checkpoint(best)
    assert (run / "checkpoints/motion/last.pth.restart").exists()


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["last.pth", "best_model.pth"])
def test_code_running_pickle_is_refused_never_executed(run: Path, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "PWNED"
    evil = run / "checkpoints/motion" / name
    torch.save({"format_version": 1, "model": {}, "state": {"epoch": 1}, "config_hash": "x",
                "payload": _RunsCode(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused to load"):
        ckpt.load_checkpoint(evil)
    legacy = tmp_path / "legacy.pth"  # a bare pickle, not even a torch archive
    legacy.write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(legacy)
    if name == "last.pth":
        one_error_line(cli("train", "--stage", "motion", *MOTION, "--run-dir", str(run)), str(evil), "refused")
    else:
        assert cli("status", "--run-dir", str(run)).returncode == 0
        cli("submit", "--mode", "skip", "--dry-run", "--executor", "local", *MOTION, "--run-dir", str(run))
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize("content, state", [
    (b"garbage\n{not json", "step2_motion_trained"),  # rebuilt from the checkpoints on disk
    (b"", "step2_motion_trained"),
    (b"\0" * 300, "step2_motion_trained"),
    (b'step2_motion_trained\n# c\n{"version": 1, "state": "step2_mo', "step2_motion_trained"),  # half-written
    (b"step1_data_prepared\n", "step1_data_prepared"),  # hand-written reset, as the seed guide allows
])
def test_broken_or_hand_written_progress_record(run: Path, content: bytes, state: str) -> None:
    (run / FILENAME).write_bytes(content)
    done = cli("status", "--run-dir", str(run), "--json")
    assert done.returncode == 0, done.stderr
    import json

    assert json.loads(done.stdout)["state"] == state
    assert (run / FILENAME).read_text().splitlines()[0] == state or content.startswith(b"step")
    if not content.startswith(b"step"):
        assert (run / f"{FILENAME}.corrupt").read_bytes() == content


def test_symlinked_progress_record_is_refused_and_victim_untouched(run: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / FILENAME).unlink()
    (run / FILENAME).symlink_to(victim)
    one_error_line(cli("train", "--stage", "motion", *MOTION, "--run-dir", str(run)), FILENAME, "symbolic link")
    one_error_line(cli("status", "--run-dir", str(run)), FILENAME, "symbolic link")
    assert victim.read_text() == "precious\n"


def test_symlinked_lock_file_cannot_clobber_a_victim(run: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = run / f"{FILENAME}.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        ProgressFile(run).update_stage("motion", note="x")
    one_error_line(cli("train", "--stage", "motion", *MOTION, "--run-dir", str(run)), "lock", "symbolic link")
    assert victim.read_text() == "precious\n"
    dangling = run / "elsewhere-that-does-not-exist"
    lock.unlink()
    lock.symlink_to(dangling)  # a dangling link must not be followed to create a file either
    with pytest.raises(UserError, match="symbolic link"):
        ProgressFile(run).read()
    assert not dangling.exists()


def test_checkpoint_names_that_are_symlinks_are_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "last.pth").symlink_to(victim)
    ckpt.save_checkpoint(tmp_path / "ck" / "last.pth", {"model": {}})
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "ck" / "last.pth").is_symlink()
