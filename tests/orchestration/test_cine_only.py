"""A cine-only dataset (ACDC layout: cine, ED/ES labels, no LGE) trains what it can feed, through submit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mi_pipeline.data.phantom import generate_subject
from tests.data.test_adapters import CFG_SET, PARAMS, _acdc
from tests.helpers import REPO, run_module, run_status

pytestmark = pytest.mark.slow


def test_a_cine_only_dataset_trains_motion_and_the_plan_says_why_the_rest_is_left_out(tmp_path: Path) -> None:
    _acdc(tmp_path / "acdc", [generate_subject(PARAMS, i) for i in range(3)])
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    config["data"] = {"format": "acdc", "root": str(tmp_path / "acdc"), "val_fraction": 0.34, "test_fraction": 0.0,
                      **{item.split("=")[0].split(".")[1]: int(float(item.split("=")[1])) if "spacing" not in item
                         else float(item.split("=")[1]) for item in CFG_SET}}
    config["motion"]["epochs"] = 2
    (tmp_path / "acdc.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    result = run_module("mi_pipeline.submit", "--config", str(tmp_path / "acdc.yaml"), "--run-dir", str(run),
                        "--mode", "resume", "--executor", "local")
    assert result.returncode == 0, result.stdout + result.stderr
    plan = result.stdout
    for stage in ("registration", "segmentation"):
        assert f"leave   {stage}" in plan and "no LGE images" in plan, plan
    assert "run     motion" in plan
    report = run_status(run)
    assert report["stages"]["motion"]["status"] == "done"
    for stage in ("registration", "segmentation"):
        assert report["stages"][stage]["status"] == "left_out", report["stages"][stage]
        assert "no LGE images" in report["stages"][stage]["detail"]
    assert report["state"] == "step2_motion_trained", "left-out stages are not done: the state says so"
    again = run_module("mi_pipeline.submit", "--run-dir", str(run), "--dry-run")
    steps = [line.split()[0] for line in again.stdout.splitlines() if line.startswith("  ")]
    assert again.returncode == 0 and steps == ["skip", "skip", "leave", "leave"], again.stdout
    refused = run_module("mi_pipeline.submit", "--run-dir", str(run), "--retrain-from", "registration",
                         "--executor", "local")
    assert refused.returncode == 2 and "no LGE images" in refused.stderr, refused.stderr
