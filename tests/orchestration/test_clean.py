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
    for path in (dead_temp, staging / "p.npz", staging):  # a staging folder is as young as what is inside
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


def _make_run(root: Path) -> Path:
    """A run directory as far as clean can tell: its record exists."""
    from mi_pipeline.orchestration.progress import ProgressFile

    root.mkdir(parents=True)
    ProgressFile(root).update_stage("data", status="done")
    return root


def test_clean_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    """Run from a home directory (the default --run-dir is the current one): one line, nothing deleted."""
    home = tmp_path / "home"
    session = home / ".config" / "app" / ".session.k3j9x.tmp"
    session.parent.mkdir(parents=True)
    session.write_text("a desktop app's state")
    _age(session, 3600)
    done = run_module("mi_pipeline.clean", "--yes", cwd=home, timeout=120)
    assert done.returncode == 2, done.stdout
    assert done.stderr.strip() == f"error: {home}: not a run directory (no .training_progress, checkpoints/ or " \
                                  "data/splits/); clean only works on a run: give its root with --run-dir"
    assert session.exists()


def test_clean_never_follows_a_symlink_out_of_the_run(tmp_path: Path) -> None:
    """A fold folder that is a link to another run is not entered: that run's set-aside position,
    corrupted-record copy and temp files stay."""
    other = _make_run(tmp_path / "other")
    victims = [other / "checkpoints" / "motion" / "last.pth.restart", other / ".training_progress.corrupt",
               other / "checkpoints" / "motion" / ".last.pth.k3j9x.tmp"]
    victims[0].parent.mkdir(parents=True)
    for victim in victims:
        victim.write_bytes(b"the other run's")
        _age(victim, 3600)
    run = _make_run(tmp_path / "run")
    write_split_file(run, 2)
    (run / "folds" / "0").mkdir(parents=True)
    (run / "folds" / "1").symlink_to(other)  # a listed fold that is a link
    (run / "folds" / "7").symlink_to(other)  # and one folds.json does not list
    (run / "checkpoints").symlink_to(other / "checkpoints")  # a run folder that is a link
    assert run_main(clean.main, ["--run-dir", str(run), "--yes"]) == 0
    assert all(v.exists() for v in victims)


def test_clean_leaves_a_staging_folder_a_live_data_step_is_filling(tmp_path: Path, capsys) -> None:
    """The staging folder's own mtime is old (fixed when made) but a file inside is fresh: not touched;
    and while the record says the data stage runs in a live process, no staging folder is."""
    import socket

    from mi_pipeline.orchestration.progress import ProgressFile

    run = _make_run(tmp_path / "run")
    staging = run / "data" / ".cache.tmp-1a2b3c4d"
    (staging / "cache").mkdir(parents=True)
    (staging / "cache" / "s007.npz").write_bytes(b"x" * 100)  # just written by the live step
    for path in (staging / "cache", staging):
        _age(path, 3600)
    assert run_main(clean.main, ["--run-dir", str(run), "--yes"]) == 0
    assert staging.is_dir() and "nothing to reclaim" in capsys.readouterr().out

    _age(staging / "cache" / "s007.npz", 3600)  # all of it old now, but the data step is alive
    splits_temp = run / "data" / "splits" / ".train.txt.ab12cd34.tmp"  # and may be writing its lists slowly
    splits_temp.parent.mkdir(parents=True)
    splits_temp.write_text("s001\n")
    _age(splits_temp, 3600)
    ProgressFile(run).update_stage("data", status="running", executor="local", pid=os.getpid(),
                                   host=socket.gethostname())
    assert run_main(clean.main, ["--run-dir", str(run), "--yes"]) == 0
    assert staging.is_dir() and splits_temp.exists()

    ProgressFile(run).update_stage("data", status="failed", pid=None)  # the step died: now it is a leftover
    assert run_main(clean.main, ["--run-dir", str(run), "--yes"]) == 0
    assert not staging.exists() and not splits_temp.exists() and "deleted 2 item(s)" in capsys.readouterr().out
