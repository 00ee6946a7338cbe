"""One run's stage jobs inside the podman image on the live local cluster (container.runtime: podman).

Marked ``image`` (and ``slurm``, like everything here): .ci/run runs it after building the image.
The submitter runs on the host (it needs sbatch/sacct); submitit starts every stage job as
``srun ... podman run --rm ... --entrypoint=python IMAGE -u -m submitit.core._submit FOLDER``.
USR2 to the motion job reaches python through srun and podman's signal proxy; the job saves its
position, and submitit's handler requeues it with ``scontrol requeue`` *inside* the container,
through the SLURM client bound in (tests/containers/image.py: SLURM_CLIENT_BINDS). The requeued job
starts a fresh container, which resumes from last.pth. The weights must be bit-identical to the same
config run on the host.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.containers.image import (
    CONTAINERS_CONF,
    SLURM_CLIENT_BINDS,
    podman,
    require_image,
)
from tests.helpers import (
    REPO,
    assert_same_weights,
    checkpoint_epoch,
    model_weights,
    run_module,
    run_status,
    wait_all_done,
    wait_for,
)

pytestmark = [pytest.mark.image]

TINY = REPO / "tests" / "configs" / "tiny.yaml"
SLURM_SETTINGS = ["--set", "slurm.gpus_per_node=0", "--set", "slurm.cpus_per_task=1", "--set", "slurm.mem_gb=1",
                  "--set", "slurm.time_min=20"]
JOB_ENV = {"MI_PIPELINE_TEST_SLOW_WRITE_S": "0.6", "CONTAINERS_CONF": CONTAINERS_CONF}
TRAINED = ("motion", "registration", "segmentation")


status = run_status


def test_stage_jobs_run_in_the_image_and_usr2_requeues_inside_it(slurm_cluster, tmp_path: Path) -> None:
    image = require_image()
    config = tmp_path / "podman.yaml"
    cfg = yaml.safe_load(TINY.read_text())
    cfg["container"] = {"runtime": "podman", "image": image, "nv": False, "binds": list(SLURM_CLIENT_BINDS)}
    config.write_text(yaml.safe_dump(cfg))

    # The same config on the host (the container section only matters to the SLURM executor).
    host_dir = tmp_path / "host"
    started = time.monotonic()
    host = run_module("mi_pipeline.submit", "--config", str(config), "--run-dir", str(host_dir), "--executor",
                      "local", "--mode", "fresh", "--yes", timeout=600)
    assert host.returncode == 0, host.stdout[-2000:] + host.stderr[-2000:]
    host_wall = time.monotonic() - started

    run_dir = tmp_path / "image"
    started = time.monotonic()
    submitted = run_module("mi_pipeline.submit", "--config", str(config), "--run-dir", str(run_dir), "--executor",
                           "slurm", *SLURM_SETTINGS, "--mode", "fresh", "--yes", timeout=120, extra_env=JOB_ENV)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    ids = {s: i["job_id"] for s, i in status(run_dir)["stages"].items() if i["job_id"]}
    motion_job = ids["motion"]
    script = next((run_dir / "logs" / "slurm").glob(f"{motion_job}/*_submission.sh")).read_text()
    assert "podman run --rm" in script and f"--entrypoint=python {image}" in script, script

    last = run_dir / "checkpoints" / "motion" / "last.pth"
    wait_for(lambda: checkpoint_epoch(last) >= 1, 400, "motion epoch 1")
    running = podman("ps", "--no-trunc", "--format", "{{.Image}} {{.Command}}")
    assert image in running.stdout and "submitit.core._submit" in running.stdout, running.stdout + running.stderr
    subprocess.run(["scancel", "--signal=USR2", motion_job], check=True)
    slurm_cluster.wait_until_requeued(motion_job, timeout=120)
    log = run_dir / "logs" / "motion" / "train.log"
    wait_for(lambda: "resuming from last.pth" in log.read_text(), 300, "motion to resume")
    report = wait_all_done(run_dir, timeout=600)
    wall = time.monotonic() - started

    motion = report["stages"]["motion"]
    assert motion["requeues"] >= 1 and motion["attempts"] == 2 and motion["job_id"] == motion_job, motion
    runs = slurm_cluster.sacct_all(motion_job, all_runs=True)
    assert [r.state for r in runs if r.job_id == motion_job][:1] == ["REQUEUED"], runs
    assert "resuming from last.pth at epoch" in log.read_text()
    for stage in ("data", *TRAINED):
        assert slurm_cluster.wait_for(ids[stage], {"COMPLETED"}, timeout=60)
    # submitit logs this right after its `scontrol requeue` (run inside the container) succeeded
    job_log = "".join(p.read_text() for p in (run_dir / "logs" / "slurm" / motion_job).glob("*_log.*"))
    assert f"Requeued job {motion_job}" in job_log, job_log[-3000:]
    for stage in TRAINED:
        assert_same_weights(model_weights(run_dir / "checkpoints" / stage / "last.pth"),
                            model_weights(host_dir / "checkpoints" / stage / "last.pth"))
    print(f"cluster chain in the image with one USR2 requeue of motion (job {motion_job}): {wall:.0f}s; "
          f"same config on the host, local executor: {host_wall:.0f}s; weights of all three stages bit-identical")
