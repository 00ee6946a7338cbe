"""A cine-only dataset (no LGE) trains what it can feed: motion, and -- where every subject has cine labels
(ACDC, M&Ms) -- segmentation's myocardium part; the plan, status and the record say what is left out and why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mi_pipeline.config import load_config, stage_hash
from mi_pipeline.data.cache import read_manifest, write_manifest
from mi_pipeline.data.phantom import generate_subject
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.submission import make_run_plan
from tests.data.test_adapters import CFG_SET, PARAMS, _acdc
from tests.helpers import REPO, run_module, run_status
from tests.stages.conftest import TINY, write_synthetic_cache


def _prepared_plan(tmp_path: Path, *, labels: bool) -> dict[str, tuple[str, str]]:
    """The plan of a run whose prepared cache (generic format: no format name says "cine-only") has no LGE."""
    cfg = load_config(None, TINY)
    write_synthetic_cache(tmp_path, lge=False, labels=labels, data_hash=stage_hash(cfg, "data"))
    plan = make_run_plan("resume", cfg, RunLayout(tmp_path))
    return {line.split()[1]: (line.split()[0], line) for line in plan.describe()}


def test_without_lge_but_with_cine_labels_segmentation_runs_for_the_myocardium_alone(tmp_path: Path) -> None:
    plan = _prepared_plan(tmp_path, labels=True)
    assert plan["registration"][0] == "leave" and "the data has no LGE images" in plan["registration"][1]
    verb, line = plan["segmentation"]
    assert verb == "run" and "not trained yet" in line, line  # not "depends on registration": that never runs
    assert "trains the myocardium only, from the cine ED labels, because the data has no LGE images" in line


def test_without_lge_or_cine_labels_both_lge_stages_are_left_out(tmp_path: Path) -> None:
    plan = _prepared_plan(tmp_path, labels=False)
    assert plan["motion"][0] == "run" and plan["registration"][0] == "leave"
    verb, line = plan["segmentation"]
    assert verb == "leave" and "no LGE images" in line and "not every subject has cine labels" in line


def test_one_subject_without_cine_labels_leaves_segmentation_out(tmp_path: Path) -> None:
    """The count comes from the prepared cache: every subject must have cine labels."""
    plan = _prepared_plan(tmp_path, labels=True)
    manifest = read_manifest(tmp_path)
    assert manifest is not None and plan["segmentation"][0] == "run"
    write_manifest(tmp_path, manifest["subjects"], manifest["data_hash"], lge_subjects=0,
                   cine_label_subjects=len(manifest["subjects"]) - 1)
    plan = make_run_plan("resume", load_config(None, TINY), RunLayout(tmp_path))
    assert plan.units[0].steps[3].left_out and "not every subject has cine labels" in plan.units[0].steps[3].reason
    write_manifest(tmp_path, manifest["subjects"], manifest["data_hash"], lge_subjects=0)  # a cache made before
    plan = make_run_plan("resume", load_config(None, TINY), RunLayout(tmp_path))  # the count existed
    assert plan.units[0].steps[3].left_out and "run the data stage again" in plan.units[0].steps[3].reason


@pytest.mark.slow
def test_a_cine_only_dataset_trains_motion_and_the_myocardium_and_the_plan_says_why(tmp_path: Path) -> None:
    _acdc(tmp_path / "acdc", [generate_subject(PARAMS, i) for i in range(3)])
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    config["data"] = {"format": "acdc", "root": str(tmp_path / "acdc"), "val_fraction": 0.34, "test_fraction": 0.0,
                      **{item.split("=")[0].split(".")[1]: int(float(item.split("=")[1])) if "spacing" not in item
                         else float(item.split("=")[1]) for item in CFG_SET}}
    config["motion"]["epochs"] = 2
    config["segmentation"]["epochs"] = 2
    (tmp_path / "acdc.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    result = run_module("mi_pipeline.submit", "--config", str(tmp_path / "acdc.yaml"), "--run-dir", str(run),
                        "--mode", "resume", "--executor", "local")
    assert result.returncode == 0, result.stdout + result.stderr
    plan = result.stdout
    assert "leave   registration" in plan and "no LGE images" in plan, plan
    assert "run     motion" in plan and "run     segmentation" in plan, plan
    assert "trains the myocardium only, from the cine ED labels" in plan, plan
    assert "pipeline finished: step2_motion_trained (left out, the data cannot feed it: registration)" in plan, plan
    report = run_status(run)
    assert report["stages"]["motion"]["status"] == "done"
    assert report["stages"]["segmentation"]["status"] == "done", report["stages"]["segmentation"]
    assert report["stages"]["registration"]["status"] == "left_out", report["stages"]["registration"]
    assert "no LGE images" in report["stages"]["registration"]["detail"]
    assert report["stages"]["segmentation"]["myocardium_only"] and not report["stages"]["motion"]["myocardium_only"]
    shown = run_module("mi_pipeline.status", "--run-dir", str(run)).stdout
    assert "segmentation  done" in shown and "myocardium only: trained on the cine labels, without LGE" in shown, shown
    again = run_module("mi_pipeline.submit", "--run-dir", str(run), "--dry-run")
    steps = [line.split()[0] for line in again.stdout.splitlines() if line.startswith("  ")]
    assert again.returncode == 0 and steps == ["skip", "skip", "leave", "skip"], again.stdout
    refused = run_module("mi_pipeline.submit", "--run-dir", str(run), "--retrain-from", "registration",
                         "--executor", "local")
    assert refused.returncode == 2 and "no LGE images" in refused.stderr, refused.stderr
