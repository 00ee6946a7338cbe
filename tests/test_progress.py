"""Progress on long steps, one way (engine.runlog.Progress): off a terminal, a line at every tenth of the
work or after every_s seconds of silence; on a terminal, a tqdm bar and no lines."""

from __future__ import annotations

import sys
from pathlib import Path

from mi_pipeline.config import load_config
from mi_pipeline.engine import runlog

TINY = Path(__file__).parent / "configs" / "tiny.yaml"


def test_lines_at_each_tenth_and_after_silence(monkeypatch) -> None:
    lines: list[str] = []
    assert list(runlog.progress(range(20), 20, "evaluate: motion", lines.append, "subject(s)")) == list(range(20))
    assert lines == [f"evaluate: motion {k}/20 subject(s)" for k in range(2, 21, 2)]
    lines.clear()
    clock = iter([0.0, 1.0, 40.0, 41.0])  # start, first update, a long second one, the third
    monkeypatch.setattr(runlog.time, "monotonic", lambda: next(clock))
    bar = runlog.Progress(1000, "registration QA (train)", lines.append, unit="subject", every_s=30.0)
    for _ in range(2):
        bar.update()
    assert lines == ["registration QA (train) 2/1000 subject"]


def test_a_terminal_gets_a_bar_and_no_lines(monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    lines: list[str] = []
    assert len(list(runlog.progress(range(5), 5, "x", lines.append))) == 5 and lines == []


def test_the_data_step_reports_its_subjects(tmp_path: Path) -> None:
    from mi_pipeline.data.prepare import prepare_data

    lines: list[str] = []
    prepare_data(load_config(TINY), tmp_path, log=lines.append)
    counts = [line for line in lines if line.startswith("data: preparing ")]
    assert counts and counts[-1] == "data: preparing 5/5 subject(s)", lines
