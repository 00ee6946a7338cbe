"""The sbatch script submitit writes for a stage, pinned against a recorded one (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import submitit

from mi_pipeline.config import load_config
from mi_pipeline.orchestration.slurm_executor import slurm_parameters

GOLDEN = Path(__file__).parent / "golden" / "segmentation.sbatch"


def test_segmentation_job_script_matches_the_recorded_one() -> None:
    cfg = load_config(None, ["slurm.partition=gpu", "slurm.account=lab", 'slurm.extra=["reservation=r1"]',
                             'slurm.setup=["module load cuda"]'])
    executor = submitit.AutoExecutor(folder="/runs/r1/logs/slurm/%j", cluster="slurm", slurm_max_num_timeout=3,
                                     slurm_python="/usr/bin/python3")
    executor.update_parameters(**slurm_parameters(cfg, "segmentation", Path("/runs/r1"), ["11", "12"]))
    script = executor._executor._make_submission_file_text("CMD", "UID")  # what sbatch receives
    assert script == GOLDEN.read_text(), "the generated sbatch script changed: review it, then update the golden file"


def test_stage_overrides_and_data_parallel_tasks() -> None:
    cfg = load_config(None, ["slurm.motion.gpus_per_node=4", "slurm.motion.time_min=30"])
    motion = slurm_parameters(cfg, "motion", Path("/r"), [])
    assert motion["gpus_per_node"] == 4 and motion["tasks_per_node"] == 4 and motion["timeout_min"] == 30
    data = slurm_parameters(cfg, "data", Path("/r"), [])
    assert "gpus_per_node" not in data and data["tasks_per_node"] == 1
    assert "dependency" not in data["slurm_additional_parameters"]
