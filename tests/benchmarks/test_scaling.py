"""The cohort scaling benchmark's measurement: a child's own peak RSS and times, and the table."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.scaling import markdown, run_measured


def test_peak_rss_is_the_childs_own(tmp_path: Path) -> None:
    small = run_measured([sys.executable, "-c", "pass"], tmp_path / "a.log")
    big = run_measured([sys.executable, "-c", "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096])"],
                       tmp_path / "b.log")
    assert small["rc"] == big["rc"] == 0
    assert big["peak_rss_mb"] - small["peak_rss_mb"] > 150
    assert big["wall_s"] >= 0 and big["cpu_s"] >= 0


def test_table_has_a_row_per_cohort_and_dashes_for_stages_not_run() -> None:
    row = {"subjects": 100, "label": "x", "cache_mb": 7.5,
           "stages": {"data": {"wall_s": 3.0, "cpu_s": 2.5, "peak_rss_mb": 260.0}}}
    lines = markdown([row]).splitlines()
    assert len(lines) == 3 and lines[2].startswith("| x | 100 | 3.0 | 2.5 | 260.0 | — |")
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
