"""The modes' promises on hand-made run directories (real checkpoint files, real record, no training)."""

from __future__ import annotations

from pathlib import Path

import torch

from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.runlog import StageLog
from mi_pipeline.graph import STAGES
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.plan import Step, keep_live_jobs, make_plan
from mi_pipeline.orchestration.progress import ProgressFile
from mi_pipeline.orchestration.stage_runner import _take_restart_token


def write_best(layout: RunLayout, stage: str, epoch: int = 1) -> None:
    ckpt.save_checkpoint(layout.best(stage), {"model": {"w": torch.ones(1)}, "config_hash": "h", "metric": 0.5,
                                              "epoch": epoch, "stage": stage})


def write_last(layout: RunLayout, stage: str, epoch: int, epochs: int) -> None:
    ckpt.save_checkpoint(layout.last(stage), {"model": {"w": torch.ones(1)}, "state": {"epoch": epoch},
                                              "finished": epoch >= epochs, "config_hash": "h"})


def plan(mode: str, root: Path) -> dict[str, tuple[bool, bool, str]]:
    layout = RunLayout(root)
    steps = make_plan(mode, layout, ProgressFile(root).read(), data_ready=True)
    return {s.stage: (s.run, s.restart, s.reason) for s in steps}


def test_skip_keeps_the_seeds_meaning_for_finished_and_hand_trained_models(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    write_best(layout, "motion")  # trained by hand: no last.pth at all
    write_best(layout, "registration")
    write_last(layout, "registration", 40, 40)
    got = plan("skip", tmp_path)
    assert got["motion"][:2] == (False, False) and got["registration"][:2] == (False, False)


def test_skip_continues_a_stage_whose_best_model_exists_but_training_has_not_finished(tmp_path: Path) -> None:
    """best_model.pth exists from epoch 1: stopped at epoch 3 of 100, it is not trained (issue 13, case 3)."""
    layout = RunLayout(tmp_path)
    write_best(layout, "motion")
    write_last(layout, "motion", 3, 100)
    write_best(layout, "registration")
    ProgressFile(tmp_path).update_stage("registration", status="running", job_id="77", executor="slurm")
    got = plan("skip", tmp_path)
    assert got["motion"][:2] == (True, False) and "epoch 3" in got["motion"][2], "continues, never restarts"
    assert got["registration"][:2] == (True, False) and "running" in got["registration"][2]
    assert got["segmentation"][0], "a dependant of an unfinished stage runs after it, never before"


def test_a_planned_restart_happens_once_however_often_the_job_reruns(tmp_path: Path) -> None:
    """A requeued job reruns with its original arguments: the token is used up the first time (case 1)."""
    layout = RunLayout(tmp_path)
    progress = ProgressFile(tmp_path)
    log = StageLog(layout.log_dir("motion"), "motion")
    write_last(layout, "motion", 7, 100)
    progress.update_stage("motion", epoch=7, restart_token="t1")
    assert _take_restart_token("motion", layout, progress, False, "t1", log) is True
    assert not layout.last("motion").exists() and layout.last("motion").with_name("last.pth.restart").exists()
    record = progress.read().stages["motion"]
    assert (record.restart_token, record.epoch) == (None, 0), "the record forgets the old epochs at once"
    write_last(layout, "motion", 2, 100)  # the restarted training got to epoch 2, then SLURM requeued it
    progress.update_stage("motion", epoch=2)
    set_aside_before = layout.last("motion").with_name("last.pth.restart").read_bytes()
    assert _take_restart_token("motion", layout, progress, False, "t1", log) is False
    assert layout.last("motion").exists(), "the requeued job continues from its last.pth"
    assert layout.last("motion").with_name("last.pth.restart").read_bytes() == set_aside_before, \
        "the set-aside copy of the old progress is never overwritten by a requeue"


TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def trained_run(root: Path, cfg) -> RunLayout:
    """Every model stage finished under ``cfg``: best and last carry its hash and config, record done."""
    from mi_pipeline.config import stage_hash, to_dict

    layout = RunLayout(root)
    for stage in ("motion", "registration", "segmentation"):
        epochs = getattr(cfg, stage).epochs
        ckpt.save_checkpoint(layout.best(stage), {"model": {"w": torch.ones(1)}, "config_hash": stage_hash(cfg, stage),
                                                  "config": to_dict(cfg), "metric": 0.5, "stage": stage})
        ckpt.save_checkpoint(layout.last(stage), {"model": {"w": torch.ones(1)}, "state": {"epoch": epochs},
                                                  "finished": True, "config_hash": stage_hash(cfg, stage)})
    with ProgressFile(root).update() as record:
        for stage in record.stages.values():
            stage.status = "done"
    return layout


def test_a_changed_config_on_a_finished_stage_is_shown_and_needs_a_decision(tmp_path: Path) -> None:
    from mi_pipeline.config import load_config

    layout = trained_run(tmp_path, load_config(TINY))
    changed = load_config(TINY, ["registration.lr=0.5"])
    steps = {s.stage: s for s in make_plan("resume", layout, ProgressFile(tmp_path).read(), True, changed)}
    assert steps["motion"].run is False and not steps["motion"].decide
    reg = steps["registration"]
    assert reg.decide and not reg.run and "registration.lr" in reg.reason and "0.5" in reg.reason
    assert steps["segmentation"].decide, "segmentation depends on the registration section too"
    kept = {s.stage: s for s in make_plan("resume", layout, ProgressFile(tmp_path).read(), True, changed, force=True)}
    assert not kept["registration"].run and not kept["registration"].decide and "--force" in kept["registration"].reason


def test_raising_epochs_continues_the_stage_and_its_dependants_follow(tmp_path: Path) -> None:
    from mi_pipeline.config import load_config

    cfg = load_config(TINY)
    layout = trained_run(tmp_path, cfg)
    more = load_config(TINY, [f"motion.epochs={cfg.motion.epochs + 5}"])
    steps = {s.stage: s for s in make_plan("resume", layout, ProgressFile(tmp_path).read(), True, more)}
    assert steps["motion"].run and not steps["motion"].restart and "epochs raised" in steps["motion"].reason
    assert steps["registration"].run is False
    assert steps["segmentation"].run and "depends on motion" in steps["segmentation"].reason


def test_retrain_from_a_stage_restarts_it_and_everything_after_it(tmp_path: Path) -> None:
    from mi_pipeline.config import load_config

    cfg = load_config(TINY)
    layout = trained_run(tmp_path, cfg)
    steps = {s.stage: s for s in make_plan("resume", layout, ProgressFile(tmp_path).read(), True, cfg,
                                           retrain_from="registration")}
    assert [st for st, s in steps.items() if s.run] == ["registration", "segmentation"]
    assert steps["registration"].restart and steps["segmentation"].restart


def _steps(*running: str, left_out: tuple[str, ...] = ()) -> list[Step]:
    return [Step(s, s in running, "test", left_out=s in left_out) for s in STAGES]


def test_a_live_job_is_kept_unless_a_stage_it_waits_on_gets_a_new_job() -> None:
    live = {"motion": "11", "registration": "12", "segmentation": "13"}
    # data done, models in flight: every live job stays the stage's job (no duplicate)
    kept, stale = keep_live_jobs(_steps("motion", "registration", "segmentation"), live)
    assert kept == live and stale == {}
    # data must run again (cache deleted, config changed): the jobs would train on files being rebuilt
    kept, stale = keep_live_jobs(_steps(*STAGES), live)
    assert kept == {} and stale == live
    # its own live data job is kept: the models already wait on it
    kept, stale = keep_live_jobs(_steps(*STAGES), {"data": "10", **live})
    assert kept == {"data": "10", **live} and stale == {}
    # registration's job ended (failed) and is resubmitted: segmentation waits on it, motion does not
    kept, stale = keep_live_jobs(_steps("motion", "registration", "segmentation"),
                                 {"motion": "11", "segmentation": "13"})
    assert kept == {"motion": "11"} and stale == {"segmentation": "13"}
    # a k-fold run's fold: the top's data job is new
    kept, stale = keep_live_jobs(_steps("motion", "segmentation", left_out=("registration",)),
                                 {"motion": "11", "segmentation": "13"}, new_upstream=("data",))
    assert kept == {} and stale == {"motion": "11", "segmentation": "13"}


def test_a_live_job_submitted_before_the_live_job_it_waits_on_is_stale() -> None:
    fold = _steps("motion", "segmentation", left_out=("registration",))
    # a fold seen from submit_chain.sh --fold: the top's queued data job came after the fold's jobs
    kept, stale = keep_live_jobs(fold, {"motion": "11", "segmentation": "13"}, upstream_live={"data": "20"})
    assert kept == {} and stale == {"motion": "11", "segmentation": "13"}
    # the fold's jobs were submitted after it (they wait on it): kept
    kept, stale = keep_live_jobs(fold, {"motion": "21", "segmentation": "23"}, upstream_live={"data": "20"})
    assert kept == {"motion": "21", "segmentation": "23"} and stale == {}
    # within one record: motion resubmitted by hand after segmentation was queued (registration waits on data only)
    kept, stale = keep_live_jobs(_steps("motion", "registration", "segmentation"),
                                 {"motion": "30", "registration": "25", "segmentation": "26"})
    assert kept == {"motion": "30", "registration": "25"} and stale == {"segmentation": "26"}
    # ids SLURM did not number (none here) are not compared
    kept, _ = keep_live_jobs(fold, {"motion": "11_1", "segmentation": "13"}, upstream_live={"data": "x"})
    assert kept == {"motion": "11_1", "segmentation": "13"}
