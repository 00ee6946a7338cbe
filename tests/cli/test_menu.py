"""The seed's interactive menu, driven through a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from mi_pipeline.orchestration.progress import FILENAME
from tests.helpers import env


def drive(run_dir: Path, answers: list[str], timeout: float = 60, extra: tuple[str, ...] = (),
          extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run submit without --mode on a terminal, answer each prompt, return (exit status, screen)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mi_pipeline.submit", "--run-dir", str(run_dir),
                             "--executor", "local", *extra], stdin=follower, stdout=follower, stderr=follower,
                            env={**env(), **(extra_env or {})})
    os.close(follower)
    screen, pending = b"", list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
            if pending and screen.rstrip().endswith(b":"):
                os.write(leader, (pending.pop(0) + "\n").encode())
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(leader)
    return proc.returncode, screen.decode("utf-8", errors="replace")


def test_menu_speaks_english_by_default(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_text("step2_motion_trained\n")
    code, screen = drive(tmp_path, ["4"])
    assert code == 0, screen
    assert "progress found: step2_motion_trained" in screen and "✗ motion model" in screen
    for option in ("1) fresh", "2) resume", "3) skip", "4) quit", "enter 1-4"):
        assert option in screen
    assert "检测" not in screen and "请" not in screen


def test_menu_shows_progress_and_models_then_quits_in_the_guides_chinese(tmp_path: Path) -> None:
    """--lang zh (or MI_PIPELINE_LANG=zh): the original guide's prompts, with the English beside them."""
    (tmp_path / FILENAME).write_text("step2_motion_trained\n")
    code, screen = drive(tmp_path, ["4"], extra_env={"MI_PIPELINE_LANG": "zh"})
    assert code == 0, screen
    assert "检测到上次训练进度: step2_motion_trained" in screen
    assert "✗ 运动估计模型 (motion)" in screen  # the record says trained, but no model file is there
    assert "✗ 配准模型 (registration)" in screen and "✗ 分割模型 (segmentation)" in screen
    for option in ("1) 从头开始训练", "2) 断点续训", "3) 智能跳过", "4) 退出", "请输入选项 [1-4]"):
        assert option in screen


def test_menu_rejects_bad_choice_and_fresh_asks_before_deleting(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "motion").mkdir(parents=True)
    (tmp_path / "checkpoints" / "motion" / "keep.txt").write_text("x")
    code, screen = drive(tmp_path, ["9", "1", "n"])
    assert "please enter 1, 2, 3 or 4" in screen
    assert str(tmp_path / "checkpoints" / "motion") in screen and "nothing deleted" in screen
    assert code == 1
    assert (tmp_path / "checkpoints" / "motion" / "keep.txt").exists()
