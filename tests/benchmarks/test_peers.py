"""benchmarks/peers (issue 19): the figures from timestamps, the table, the SLURM job script -- and
one smoke run of the real thing for our engine (``slow``: real processes and a real ``kill -9``).

The full race against Lightning and MONAI is a benchmark, not a test: ``python -m benchmarks.peers``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.peers import race, report, slurm

REPO = Path(__file__).resolve().parents[2]


def record(tool: str, nb: int, epochs: int, step: float, end_extra: float = 0.0, weights: str = "w",
           spawned: float = 0.0, first: float = 5.0, saves: list | None = None) -> dict:
    """A worker result with evenly spaced steps, a 0.1-s validation and ``end_extra`` at each epoch end."""
    losses, validations, t = [], [], first
    for _e in range(epochs):
        for _b in range(nb):
            losses.append((t, t / 2))
            t += step
        validations.append((t, t / 2, t + 0.1, (t + 0.1) / 2))
        t += 0.1 + end_extra
    return {"tool": tool, "batches_per_epoch": nb, "epochs": epochs, "losses": losses, "validations": validations,
            "spawned": spawned, "weights_sha256": weights, "threads": 1, "saves": saves or [], "writes": [],
            "checkpoint_files": {} if tool == "bare" else {"last.pth": 2**20, "best_model.pth": 2**19}}


def test_cut_finds_step_epoch_end_and_start_up():
    cut = race.cut(record("ours", nb=5, epochs=3, step=0.05, end_extra=0.02, spawned=1.0, first=4.0))
    assert cut["step_s"] == pytest.approx(0.05)
    assert cut["epoch_end_s"] == pytest.approx(0.02)
    assert cut["first_step_s"] == pytest.approx(3.0)


def test_checkpoint_calls_are_summed_per_epoch():
    # two saves after epoch 1's last step (Lightning: top-k + last), one after epoch 2's
    saves = [(4.0 + 4 * 0.05 + 0.01, 0.010, 0.008), (4.0 + 4 * 0.05 + 0.02, 0.006, 0.005), (4.0 + 9 * 0.05 + 0.2, 0.01, 0.01)]
    cut = race.cut(record("lightning", nb=5, epochs=2, step=0.05, first=4.0, saves=saves))
    assert cut["save_blocked_s"] == pytest.approx((0.016 + 0.010) / 2)  # median of the two epochs' sums
    assert cut["save_blocked_cpu_s"] == pytest.approx((0.013 + 0.01) / 2)


def test_figures_ratio_redone_steps_and_identity():
    nb, epochs, kill_after = 4, 2, 6
    killed = record("ours", nb, epochs, 0.05, weights="w", spawned=10.0, first=12.0)
    killed["losses"] = killed["losses"][:nb * epochs - kill_after + 2]  # resumed: 2 steps redone
    killed.update({"kill_after": kill_after})
    raw = {"kill_after": kill_after, "repeats": [{
        "full": {"bare": record("bare", nb, epochs, 0.10), "ours": record("ours", nb, epochs, 0.11)},
        "killed": {"ours": killed}}]}
    figs = race.figures(raw, ("bare", "ours"))
    assert figs["ours"]["step_ratio"] == pytest.approx(1.1)
    assert figs["ours"]["steps_redone_after_kill"] == [2]
    assert figs["ours"]["bit_identical_after_kill"] == [True]
    assert figs["ours"]["weights_equal_bare_loop"] == [True]
    assert figs["ours"]["resume_start_s"] == pytest.approx(2.0)
    assert figs["ours"]["last_checkpoint_mb"] == 1.0
    assert figs["ours"]["checkpoint_mb_per_epoch"] == 1.5


def test_table_has_a_row_per_tool_and_says_when_slurm_was_not_run():
    nb, epochs = 4, 2
    raw = {"kill_after": 6, "repeats": [{"full": {"bare": record("bare", nb, epochs, 0.1),
                                                   "ours": record("ours", nb, epochs, 0.1)}, "killed": {}}]}
    results = {"tools": race.figures(raw, ("bare", "ours")), "kill_after": 6, "slurm": {"skipped": "not requested"},
               "meta": {"date_utc": "now", "command": "python -m benchmarks.peers", "repeats": 1, "epochs": 2,
                        "versions": {}, "load_avg_start": [0], "load_avg_end": [0], "wall_s": 1}}
    text = report.markdown(results)
    assert sum(line.startswith("| ") for line in text.splitlines()) == 3  # header + two rows
    assert "not run" in text and "ours (mi_pipeline engine)" in text


def test_slurm_job_requeues_and_runs_the_worker_under_srun(tmp_path):
    r = race.Race(race.QUICK, REPO / "configs" / "demo.yaml", tmp_path, ("bare", "ours", "lightning"))
    lightning = slurm.batch_script(r, "lightning", tmp_path / "l", kill_after=5)
    ours = slurm.batch_script(r, "ours", tmp_path / "o", kill_after=5)
    for script in (lightning, ours):
        assert "#SBATCH --requeue" in script and "\nsrun " in script and "'--freeze-after' '5'" in script
    assert "'--slurm'" in lightning and "'--stop-on-signal'" in ours
    assert slurm.SIGNALS == {"lightning": "USR1", "ours": "USR2"}


def test_slurm_part_is_skipped_with_a_reason_when_there_is_no_cluster(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(slurm.shutil, "which", lambda _name: None)
    r = race.Race(race.QUICK, REPO / "configs" / "demo.yaml", tmp_path, ("bare", "ours"))
    assert slurm.measure(r, {"kill_after": 5, "repeats": []}) == {"skipped": "sbatch not on PATH (no SLURM here)"}
    assert "skipping the SLURM part" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_ours_killed_mid_epoch_resumes_bit_identical(tmp_path):
    """The real race, for our engine only (plus the bare loop): four processes, ~35 s of CPU time
    (about 80 s of wall time on the shared development VM at load 6-10)."""
    out = tmp_path / "peers.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.peers", "--quick", "--tools", "ours", "--json", str(out),
                           "--work-dir", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figs = json.loads(out.read_text())["tools"]["ours"]
    # killed mid-epoch 2, ours resumes from its newest mid-epoch last.pth (one every OURS_EVERY_STEPS steps)
    assert 0 <= figs["steps_redone_after_kill"][0] <= race.OURS_EVERY_STEPS, figs["steps_redone_after_kill"]
    assert figs["bit_identical_after_kill"] == [True]
    assert figs["weights_equal_bare_loop"] == [True]
    assert figs["threads"] == [1]
