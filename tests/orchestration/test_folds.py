"""k-fold runs (issue 15) on hand-made run directories: the split file, the fold layout, the seed's cases
in both layouts, one plan per fold, the folds table. Real files and records; no training."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from mi_pipeline.cli import submit as submit_cli
from mi_pipeline.cli.common import run_main
from mi_pipeline.config import Config, load_config, stage_hash
from mi_pipeline.data import cache
from mi_pipeline.data import folds as split_file
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.errors import ConfigError, InputError, UserError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.fold_setup import check_fold, prepare_folds
from mi_pipeline.orchestration.pipeline import record_skips
from mi_pipeline.orchestration.plan import make_plan
from mi_pipeline.orchestration.progress import ProgressFile
from mi_pipeline.orchestration.stage_runner import train_stage
from mi_pipeline.orchestration.status_report import collect, render
from mi_pipeline.orchestration.submission import make_run_plan
from tests.orchestration.test_plan_modes import TINY, write_best, write_last

IDS = [f"s{i}" for i in range(6)]
TEST = ["s5"]


def prepared(root: Path, k: int = 2, seed: int = 0) -> tuple[Config, RunLayout]:
    """A run whose data stage is done (manifest, cache files, splits) and whose folds are made."""
    cfg = load_config(TINY, [f"cv.folds={k}", f"data.split_seed={seed}"])
    cache.write_manifest(root, IDS, data_hash=stage_hash(cfg, "data"))
    for sid in IDS:
        (cache.cache_dir(root) / f"{sid}.npz").touch()
    cache.write_splits(root, {"train": IDS[:4], "val": [IDS[4]], "test": TEST})
    top = RunLayout(root)
    ProgressFile.for_run(top).update_stage("data", status="done")
    prepare_folds(cfg, top)
    return cfg, top


def trained(layout: RunLayout) -> None:
    """Every model stage finished: best and finished last on disk, the record says done."""
    for stage in ("motion", "registration", "segmentation"):
        write_best(layout, stage)
        write_last(layout, stage, 2, 2)
        ProgressFile.for_run(layout).update_stage(stage, status="done", epoch=2, epochs=2)


# --- the split file -------------------------------------------------------------------------------


def test_split_file_is_by_subject_written_once_and_each_fold_is_a_run(tmp_path: Path) -> None:
    cfg, top = prepared(tmp_path, k=3)
    content = split_file.read_folds(tmp_path)
    pool = sorted(set(IDS) - set(TEST))
    vals = [f["val"] for f in content["folds"]]
    assert sorted(s for v in vals for s in v) == pool, "every non-test subject is held out by exactly one fold"
    for fold in content["folds"]:
        assert not set(fold["train"]) & set(fold["val"]) and sorted(fold["train"] + fold["val"]) == pool
    assert content["test"] == TEST and content["split_seed"] == 0 and content["k"] == 3
    text = split_file.folds_path(tmp_path).read_text()
    prepare_folds(cfg, top)  # again (submit and the data stage both call it): nothing changes
    assert split_file.folds_path(tmp_path).read_text() == text
    for k in range(3):
        fold = top.fold(k)
        assert fold.root == tmp_path / "folds" / str(k) and fold.fold_index == k and fold.top == top
        assert cache.read_split(fold.root, "val") == vals[k] and cache.read_split(fold.root, "test") == TEST
        assert cache.cache_dir(fold.root).resolve() == cache.cache_dir(tmp_path).resolve(), "one shared cache"
        assert fold.progress.read_text().splitlines()[0] == "step1_data_prepared"
        assert all(str(p).startswith(str(fold.root)) for p in fold.fresh_targets()), "fresh of a fold stays in it"


@pytest.mark.parametrize("change, expected", [
    ({"seed": 5}, "made with data.split_seed = 0, but now 5"),
    ({"k": 4}, "made with cv.folds = 2, but now 4"),
])
def test_a_changed_split_seed_or_fold_count_is_an_error_naming_the_file(tmp_path: Path, change, expected) -> None:
    prepared(tmp_path)
    with pytest.raises(InputError) as err:
        split_file.check_settings(tmp_path, change.get("k", 2), change.get("seed", 0))
    assert str(split_file.folds_path(tmp_path)) in str(err.value) and expected in str(err.value)
    with pytest.raises(InputError, match="the dataset's subjects"):
        split_file.ensure_folds(tmp_path, IDS + ["s9"], TEST, 2, 0)


def test_bad_fold_settings_are_one_line_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="cv: folds must be 0 .* or >= 2, got 1"):
        load_config(TINY, ["cv.folds=1"])
    with pytest.raises(ConfigError, match="cv.folds: 6 folds but only 5 subject"):
        split_file.make_folds(IDS, TEST, 6, 0)
    with pytest.raises(UserError, match="--fold 2: out of range, run has folds 0..1"):
        check_fold(2, 2, "run")
    cfg = load_config(TINY)  # data prepared, no split file yet: submit --folds 9 stops before anything runs
    cache.write_manifest(tmp_path, IDS, data_hash=stage_hash(cfg, "data"))
    for sid in IDS:
        (cache.cache_dir(tmp_path) / f"{sid}.npz").touch()
    cache.write_splits(tmp_path, {"train": IDS[:4], "val": [IDS[4]], "test": TEST})
    argv = ["--config", str(TINY), "--run-dir", str(tmp_path), "--executor", "local", "--mode", "resume"]
    assert run_main(submit_cli.main, [*argv, "--folds", "9"]) == 2
    assert capsys.readouterr().err.strip() == ("error: cv.folds: 9 folds but only 5 subject(s) outside the test "
                                               "split; use at most 5 folds (or lower data.test_fraction)")
    assert not (tmp_path / "folds").exists() and not split_file.folds_path(tmp_path).exists()
    assert run_main(submit_cli.main, [*argv, "--folds", "2", "--fold", "2", "--dry-run"]) == 2
    assert "--fold 2: out of range" in capsys.readouterr().err


def test_the_data_stage_refuses_to_run_inside_a_fold(tmp_path: Path) -> None:
    cfg, top = prepared(tmp_path)
    before = top.fold(0).progress.read_text()
    with pytest.raises(UserError, match="runs at the run top"):
        train_stage("data", cfg, top.fold(0))
    assert top.fold(0).progress.read_text() == before, "the fold's record is untouched"


# --- the seed's cases, in both layouts --------------------------------------------------------------


@pytest.fixture(params=["single", "fold"])
def run(request, tmp_path: Path):
    """(layout of the run or fold under test, plan(mode) -> {stage: (run, restart, reason)}, top layout)."""
    if request.param == "single":
        layout = RunLayout(tmp_path)

        def plan(mode: str) -> dict:
            steps = make_plan(mode, layout, ProgressFile.for_run(layout).read(), data_ready=True)
            return {s.stage: (s.run, s.restart, s.reason) for s in steps}

        return layout, plan, layout
    cfg, top = prepared(tmp_path, k=2)
    trained(top.fold(0))  # the other fold is finished, and must stay out of everything below

    def plan_fold(mode: str) -> dict:
        plans = make_run_plan(mode, cfg, top, data_ready=True)
        assert not any(s.run for s in plans.fold_steps(0)), f"fold 0 is done and untouched: {plans.fold_steps(0)}"
        return {s.stage: (s.run, s.restart, s.reason) for s in plans.fold_steps(1)}

    return top.fold(1), plan_fold, top


def test_skip_retrains_a_corrupted_best_model_in_either_layout(run) -> None:
    layout, plan, _ = run
    trained(layout)
    best = layout.best("motion")
    best.write_bytes(best.read_bytes()[:100])
    got = plan("skip")
    assert got["motion"][:2] == (True, True) and "corrupted" in got["motion"][2]
    assert got["registration"][0] is False and got["segmentation"][0] is True
    assert "depends on motion" in got["segmentation"][2]


def test_a_hand_written_state_resumes_from_that_step_in_either_layout(run) -> None:
    layout, plan, _ = run
    trained(layout)
    layout.progress.write_text("step2_motion_trained\n")  # the seed's "restart from step 3"
    assert ProgressFile.for_run(layout).read().state == "step2_motion_trained"
    got = plan("resume")
    assert got["motion"][0] is False and got["registration"][0] and got["segmentation"][0]


def test_a_corrupted_progress_file_is_rebuilt_in_either_layout(run) -> None:
    layout, _, _ = run
    trained(layout)
    (layout.root / "data" / "cache").mkdir(parents=True, exist_ok=True)
    if not cache.read_manifest(layout.root):
        cache.write_manifest(layout.root, IDS, data_hash="x")
    layout.progress.write_bytes(b"\x00garbage{{")
    progress = ProgressFile.for_run(layout).read()
    assert progress.state == "all_completed" and any("corrupted" in n for n in progress.notes)
    assert layout.progress.with_name(".training_progress.corrupt").read_bytes() == b"\x00garbage{{"


def test_the_menu_shows_state_and_models_in_either_layout(run) -> None:
    layout, _, top = run
    write_best(layout, "motion")
    layout.progress.write_text("step2_motion_trained\n")
    header = submit_cli.menu_header(top, ProgressFile.for_run(top).read(), "zh")
    label = "" if layout is top else f"[fold {layout.fold_index}] "
    assert f"{label}检测到上次训练进度: step2_motion_trained" in header
    block = header.split(f"{label}检测到上次训练进度")[1]
    assert "✓ 运动估计模型 (motion)" in block and "✗ 配准模型 (registration)" in block
    if layout is not top:
        assert "[fold 0] 检测到上次训练进度: all_completed" in header


# --- one plan per fold, the table --------------------------------------------------------------------


def test_each_fold_is_planned_on_its_own_record(tmp_path: Path) -> None:
    cfg, top = prepared(tmp_path, k=3)
    for k in range(3):
        trained(top.fold(k))
    best = top.fold(2).best("registration")
    best.write_bytes(best.read_bytes()[:50])
    plans = make_run_plan("skip", cfg, top, data_ready=True)
    assert not plans.data.run and "data cache present" in plans.data.reason
    assert [s.stage for s in plans.fold_steps(2) if s.run] == ["registration", "segmentation"]
    assert not any(s.run for k in (0, 1) for s in plans.fold_steps(k))
    assert "fold 2  restart registration" in "\n".join(plans.describe())
    only = make_run_plan("fresh", cfg, top, data_ready=True, only=1)
    assert [u.layout.fold_index for u in only.units[1:]] == [1] and not only.data.run, \
        "fresh for one fold keeps the shared data"


def test_status_shows_the_folds_as_a_table(tmp_path: Path) -> None:
    _, top = prepared(tmp_path, k=2)
    trained(top.fold(0))
    ProgressFile.for_run(top.fold(1)).update_stage("motion", status="running", epoch=1, epochs=12, executor="local",
                                            pid=os.getpid(), host=socket.gethostname())
    report = collect(top)
    assert set(report["folds"]) == {"0", "1"}
    assert report["folds"]["0"]["state"] == "all_completed"
    text = render(report)
    lines = text.splitlines()
    assert "folds: 2" in lines
    header = next(line for line in lines if line.strip().startswith("fold "))
    assert header.split() == ["fold", "state", "motion", "registration", "segmentation"]
    row0 = next(line for line in lines if line.strip().startswith("0 "))
    assert row0.split()[:3] == ["0", "all_completed", "done"]
    row1 = next(line for line in lines if line.strip().startswith("1 "))
    assert "step1_data_prepared" in row1 and "1/12" in row1
    assert "motion" not in text.split("folds: 2")[0], "the top of a k-fold run lists only its data stage"
    assert report["state"] == "step1_data_prepared" and "state: step1_data_prepared (the least advanced of 2 folds: " \
        "0 all_completed, 1 step1_data_prepared)" in text, "the top state summarises the folds"
    trained(top.fold(1))
    report = collect(top)
    assert (report["state"], report["top_state"]) == ("all_completed", "step1_data_prepared"), \
        "every fold finished: the run is, although its top record holds only the data stage"
    assert json.dumps(report)  # status --json


@pytest.mark.slow
def test_a_local_kfold_run_completes_then_resume_has_nothing_to_do(tmp_path: Path) -> None:
    from tests.helpers import run_module

    short = ["--set", "motion.epochs=1", "--set", "registration.epochs=1", "--set", "segmentation.epochs=1"]
    argv = ["--config", str(TINY), "--run-dir", str(tmp_path), "--executor", "local", *short]
    result = run_module("mi_pipeline.submit", *argv, "--mode", "fresh", "--yes", "--folds", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "folds finished: 0 all_completed, 1 all_completed" in result.stdout
    for k in (0, 1):
        assert (tmp_path / "folds" / str(k) / ".training_progress").read_text().splitlines()[0] == "all_completed"
        for stage in ("motion", "registration", "segmentation"):
            assert (tmp_path / "folds" / str(k) / "checkpoints" / stage / "best_model.pth").is_file()
            assert (tmp_path / "folds" / str(k) / "logs" / stage / "train.log").is_file()
    assert not (tmp_path / "checkpoints").exists(), "no model trains at the top of a k-fold run"
    again = run_module("mi_pipeline.submit", *argv, "--mode", "resume", "--dry-run")  # no --folds: the file says 2
    assert again.returncode == 0 and "2-fold run" in again.stdout, again.stdout + again.stderr
    plan = [line for line in again.stdout.splitlines() if line.startswith("  ")]
    verbs = [line.split()[2] if line.split()[0] == "fold" else line.split()[1] for line in plan]
    assert verbs == ["skip"] * 7, plan  # the data step, then 3 stages x 2 folds


def test_a_cine_only_k_fold_run_plans_and_shows_the_myocardium_alone_in_every_fold(tmp_path: Path) -> None:
    """No LGE, cine labels for every subject (the cache's counts): each fold leaves registration out and
    trains segmentation for the myocardium; status says both once under the fold table."""
    cfg, top = prepared(tmp_path, k=2)
    cache.write_manifest(tmp_path, IDS, data_hash=stage_hash(cfg, "data"), lge_subjects=0,
                         cine_label_subjects=len(IDS))
    plan = make_run_plan("resume", cfg, top)
    for k in (0, 1):
        steps = {s.stage: s for s in plan.fold_steps(k)}
        assert steps["registration"].left_out and not steps["registration"].run
        assert steps["segmentation"].run and "trains the myocardium only" in steps["segmentation"].reason
    for k in (0, 1):  # what the local executor records, and a myocardium-only model in fold 0
        record_skips(list(plan.fold_steps(k)), ProgressFile.for_run(top.fold(k)))
    ckpt.save_checkpoint(top.fold(0).best("segmentation"), {"model": {"w": torch.ones(1)}, "config_hash": "h",
                                                            "facts": {"myocardium_only": True}})
    text = render(collect(top))
    assert "registration: left out: the data has no LGE images" in text, text
    assert "segmentation (fold 0): myocardium only: trained on the cine labels, without LGE" in text, text
