"""The progress record: seed state names, hand edits, corruption, locking under concurrency."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from mi_pipeline.errors import UserError
from mi_pipeline.orchestration.progress import (
    FILENAME,
    STATES,
    ProgressFile,
    StageRecord,
    state_from_done,
)


def test_absent_file_means_not_started(tmp_path: Path) -> None:
    assert ProgressFile(tmp_path).read().state == "step0_not_started"


def test_cat_shows_the_state_first(tmp_path: Path) -> None:
    record = ProgressFile(tmp_path)
    record.update_stage("data", status="done")
    record.update_stage("motion", status="done", epoch=4)
    first_line = (tmp_path / FILENAME).read_text().splitlines()[0]
    assert first_line == "step2_motion_trained"
    assert record.read().stages["motion"].epoch == 4


def test_parallel_branch_does_not_advance_linear_state() -> None:
    assert state_from_done(["data", "registration"]) == "step1_data_prepared"
    assert state_from_done(["data", "motion", "registration"]) == "step3_registration_trained"
    assert state_from_done(["data", "motion", "registration", "segmentation"]) == "all_completed"


@pytest.mark.parametrize("state", STATES)
def test_hand_written_state_is_accepted(tmp_path: Path, state: str) -> None:
    (tmp_path / FILENAME).write_text(f"{state}\n")
    progress = ProgressFile(tmp_path).read()
    assert progress.state == ("all_completed" if state == "step4_segmentation_trained" else state)
    assert any("by hand" in note for note in progress.notes)


def test_hand_edit_of_first_line_overrides_detail(tmp_path: Path) -> None:
    record = ProgressFile(tmp_path)
    for stage in ("data", "motion", "registration"):
        record.update_stage(stage, status="done", epoch=3)
    path = tmp_path / FILENAME
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["step1_data_prepared", *lines[1:]]) + "\n")
    progress = record.read()
    assert progress.state == "step1_data_prepared"
    assert progress.stages["motion"].status == "not_started" and progress.stages["motion"].epoch == 0


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"garbage\n{", b"step2_motion_tra", b"\xff\xfe\x00bad"])
def test_corrupted_file_is_kept_and_rebuilt_from_disk(tmp_path: Path, content: bytes) -> None:
    (tmp_path / FILENAME).write_bytes(content)
    rebuilt = {"data": StageRecord(status="done"), "motion": StageRecord(status="done")}
    progress = ProgressFile(tmp_path, inspect_disk=lambda: rebuilt).read()
    assert progress.state == "step2_motion_trained"
    assert any("corrupted" in note for note in progress.notes)
    assert (tmp_path / f"{FILENAME}.corrupt").read_bytes() == content
    assert (tmp_path / FILENAME).read_text().startswith("step2_motion_trained\n")


def test_half_written_detail_keeps_state(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_text('step1_data_prepared\n{"version": 1, "sta')
    assert ProgressFile(tmp_path).read().state == "step1_data_prepared"


def test_symlinked_progress_file_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / FILENAME).symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        ProgressFile(tmp_path).update_stage("data", status="done")
    assert victim.read_text() == "precious"


def _bump(run_dir: str, worker: int, count: int) -> None:
    record = ProgressFile(Path(run_dir))
    for _ in range(count):
        with record.update() as progress:
            progress.stages["motion"].attempts += 1
            progress.stages["data"].epoch = worker


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    workers, count = 4, 50
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_bump, args=(str(tmp_path), w, count)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert ProgressFile(tmp_path).read().stages["motion"].attempts == workers * count
    json.loads((tmp_path / FILENAME).read_text().split("\n", 2)[2])  # the detail still parses
