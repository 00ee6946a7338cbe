"""What the sbatch wrappers ask Python (``python -m mi_pipeline chain``): the same plan and record as submit."""

from __future__ import annotations

import json
from pathlib import Path

from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.progress import ProgressFile
from tests.helpers import run_module

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def chain(*args: str, **env: str):
    return run_module("mi_pipeline", "chain", *args, extra_env=env)


def stages(run: Path) -> dict:
    return json.loads((run / ".training_progress").read_text().split("\n", 2)[2])["stages"]


def test_plan_of_a_new_run_names_each_stage_and_what_it_waits_on(tmp_path: Path) -> None:
    out = chain("plan", str(TINY), str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = [line.split()[:4] for line in out.stdout.splitlines()]
    assert lines == [["run", "data", "-", "-"], ["run", "motion", "-", "data"], ["run", "registration", "-", "data"],
                     ["run", "segmentation", "-", "motion,registration"]]
    assert not (tmp_path / ".training_progress").exists() or stages(tmp_path)["data"]["status"] == "not_started"


def test_record_jobs_and_stage_changes_land_in_the_locked_record(tmp_path: Path) -> None:
    assert chain("record-jobs", str(tmp_path), "by a test", "data=101", "motion=102").returncode == 0
    record = stages(tmp_path)
    assert (record["data"]["job_id"], record["data"]["status"], record["motion"]["job_id"]) == ("101", "pending", "102")
    assert chain("record", str(tmp_path), "motion", "status=failed", "error=boom", "note=").returncode == 0
    assert (stages(tmp_path)["motion"]["status"], stages(tmp_path)["motion"]["error"]) == ("failed", "boom")


def test_requeue_is_allowed_up_to_the_configured_cap_and_recorded(tmp_path: Path) -> None:
    ProgressFile(tmp_path).update_stage("motion", status="running")
    ok = chain("may-requeue", str(TINY), str(tmp_path), "motion", SLURM_JOB_ID="7", SLURM_RESTART_COUNT="1",
               MAX_REQUEUES="")
    assert ok.returncode == 0 and stages(tmp_path)["motion"]["status"] == "pending"
    over = chain("may-requeue", str(TINY), str(tmp_path), "motion", SLURM_JOB_ID="7", SLURM_RESTART_COUNT="3",
                 MAX_REQUEUES="3")
    assert over.returncode == 1 and "requeued 3 times" in over.stdout
    assert stages(tmp_path)["motion"]["status"] == "failed" and "max_requeues=3" in stages(tmp_path)["motion"]["error"]
    assert RunLayout(tmp_path).progress.read_text().splitlines()[0] == "step0_not_started"


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("motion: {epochz: 3}\n")
    out = chain("plan", str(bad), str(tmp_path))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "epochz" in out.stderr


def test_a_cine_only_chain_runs_segmentation_after_motion_alone(tmp_path: Path) -> None:
    """No LGE but cine labels (M&Ms): registration is a skip saying why, and segmentation waits on motion
    only -- no afterok on a registration job that is never submitted."""
    import yaml

    config = yaml.safe_load(TINY.read_text())
    config["data"] = {**config.get("data", {}), "format": "mnms", "root": str(tmp_path / "mnms")}
    (tmp_path / "mnms.yaml").write_text(yaml.safe_dump(config))
    out = chain("plan", str(tmp_path / "mnms.yaml"), str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    lines = {line.split()[1]: line for line in out.stdout.splitlines()}
    assert lines["registration"].startswith("skip registration left out: the data has no LGE images")
    assert lines["segmentation"].split()[:4] == ["run", "segmentation", "-", "motion"]
    assert "trains the myocardium only, from the cine ED labels" in lines["segmentation"]
