"""The cohort scaling benchmark's measurement: a child's own peak RSS and times, and the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.scaling import markdown
from tests.helpers import env


def _measure_from_a_small_parent(code: str, log: Path) -> dict:
    """``run_measured`` from a fresh, small process, as the benchmark runs it: a child's ``ru_maxrss``
    starts at its parent's RSS when it was forked (Linux carries it through exec), so measuring from
    this test process (torch loaded, hundreds of MB) would only see the test's own size."""
    probe = (f"import json; from benchmarks.scaling import run_measured; "
             f"print(json.dumps(run_measured([{sys.executable!r}, '-c', {code!r}], __import__('pathlib').Path({str(log)!r}))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env(), timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_peak_rss_is_the_childs_own(tmp_path: Path) -> None:
    small = _measure_from_a_small_parent("pass", tmp_path / "a.log")
    big = _measure_from_a_small_parent("x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096])",
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
