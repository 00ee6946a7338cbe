"""clean: lists what a run no longer needs with sizes, deletes only with --yes, and the run still resumes."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from mi_pipeline.cli import clean
from mi_pipeline.cli.common import run_main
from tests.helpers import REPO, checkpoint_epoch, run_module
from tests.test_ensemble import write_split_file

TINY = REPO / "tests" / "configs" / "tiny.yaml"


def _train(run: Path, stage: str, epochs: int) -> str:
    done = run_module("mi_pipeline.train", "--stage", stage, "--config", str(TINY), "--set", f"motion.epochs={epochs}",
                      "--run-dir", str(run), timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr + done.stdout


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_clean_lists_then_deletes_and_the_run_still_resumes(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    _train(run, "data", 1)
    _train(run, "motion", 1)
    ckpt = run / "checkpoints" / "motion"
    shutil.copy(ckpt / "last.pth", ckpt / "last.pth.restart")
    dead_temp = ckpt / ".last.pth.k3j9x.tmp"
    dead_temp.write_bytes(b"half a checkpoint")
    staging = run / "data" / ".cache.old-1a2b3c4d"
    staging.mkdir()
    (staging / "p.npz").write_bytes(b"x" * 5000)
    live_temp = run / "logs" / "motion" / ".metrics.jsonl.q8w7.tmp"  # young: a live writer may own it
    live_temp.write_bytes(b"{}")
    for path in (dead_temp, staging):
        _age(path, 3600)
    targets = [ckpt / "last.pth.restart", dead_temp, staging]

    assert run_main(clean.main, ["--run-dir", str(run)]) == 0
    listing = capsys.readouterr().out
    assert all(str(p.relative_to(run)) in listing for p in targets) and "in 3 item(s)" in listing
    assert "nothing deleted" in listing and all(p.exists() for p in targets)
    assert ".metrics.jsonl" not in listing

    assert run_main(clean.main, ["--run-dir", str(run), "--yes"]) == 0
    assert "deleted 3 item(s)" in capsys.readouterr().out
    assert not any(p.exists() for p in targets) and live_temp.exists()
    assert (ckpt / "last.pth").is_file() and (ckpt / "best_model.pth").is_file()

    out = _train(run, "motion", 2)  # what a resume needs is all still there
    assert "resuming from last.pth at epoch" in out
    assert checkpoint_epoch(ckpt / "last.pth") == 2
    assert run_main(clean.main, ["--run-dir", str(run)]) == 0
    assert "nothing to reclaim" in capsys.readouterr().out


def test_clean_finds_what_the_folds_of_a_kfold_run_set_aside(tmp_path: Path) -> None:
    from mi_pipeline.layout import RunLayout
    from mi_pipeline.orchestration.reclaim import find_reclaimable

    top = RunLayout(tmp_path / "run")
    kept = []
    for k in range(2):
        fold = top.fold(k)
        fold.ckpt_dir("registration").mkdir(parents=True)
        fold.last("registration").write_bytes(b"resume reads this")
        stale = fold.last("registration").with_name("last.pth.stale")
        stale.write_bytes(b"an old position")
        kept.append(fold.last("registration"))
        if k == 1:
            (fold.root / ".training_progress.corrupt").write_text("broken")
    write_split_file(top.root, 2)
    found = {r.path.relative_to(top.root).as_posix() for r in find_reclaimable(top)}
    assert found == {"folds/0/checkpoints/registration/last.pth.stale",
                     "folds/1/checkpoints/registration/last.pth.stale", "folds/1/.training_progress.corrupt"}

