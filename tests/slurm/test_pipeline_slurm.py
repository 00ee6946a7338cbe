"""The pipeline through real sbatch (submitit) on the local cluster: chain, requeue, failure, no duplicates.

These share one uninterrupted reference run; each scenario works in its own run directory.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from mi_pipeline.layout import RunLayout
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

TINY = REPO / "tests" / "configs" / "tiny.yaml"
SLURM_SETTINGS = ["--set", "slurm.gpus_per_node=0", "--set", "slurm.cpus_per_task=1", "--set", "slurm.mem_gb=1",
                  "--set", "slurm.time_min=20"]
STAGES = ("data", "motion", "registration", "segmentation")


# Test-only hook (fsio): every atomic write sleeps, so a stage lasts long enough for a signal to land
# mid-stage on a fast machine. It changes no result: the weights stay those of the reference run.
SLOW = {"MI_PIPELINE_TEST_SLOW_WRITE_S": "0.6"}


def submit(run_dir: Path, *args: str, slow: bool = False) -> subprocess.CompletedProcess[str]:
    """Jobs inherit the submitter's environment (sbatch exports it), so ``slow`` reaches them."""
    return run_module("mi_pipeline.submit", "--config", str(TINY), "--run-dir", str(run_dir), "--executor",
                      "slurm", *SLURM_SETTINGS, *args, timeout=120, extra_env=SLOW if slow else None)


status = run_status


def job_ids(run_dir: Path) -> dict[str, str]:
    return {s: i["job_id"] for s, i in status(run_dir)["stages"].items() if i["job_id"]}


@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("slurm_ref")
    result = submit(run_dir, "--mode", "fresh", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_all_done(run_dir)
    return run_dir


def test_chain_completes_with_dependencies_honoured(reference: Path, slurm_cluster) -> None:
    ids = job_ids(reference)
    assert set(ids) == set(STAGES)
    rec = {s: slurm_cluster.wait_for(j, {"COMPLETED"}, timeout=60) for s, j in ids.items()}
    for stage, upstream in (("motion", "data"), ("registration", "data"), ("segmentation", "motion"),
                            ("segmentation", "registration")):
        assert rec[stage].start >= rec[upstream].end, f"{stage} started before {upstream} ended"
    report = status(reference)
    for stage in ("motion", "registration"):  # both ran as jobs and both updates are in the record
        info = report["stages"][stage]
        assert info["status"] == "done" and info["epoch"] == info["epochs"] and info["attempts"] == 1
    script = next((reference / "logs" / "slurm").glob(f"{ids['segmentation']}/*_submission.sh")).read_text()
    assert "--kill-on-invalid-dep=yes" in script and "--signal=USR2@" in script and "--requeue\n" in script
    assert f"--job-name=mi_{reference.name}_segmentation" in script


@pytest.mark.parametrize("how", ["usr2", "scontrol_requeue"])
def test_preempted_motion_is_requeued_and_resumes_exactly(reference: Path, slurm_cluster, tmp_path: Path,
                                                         how: str) -> None:
    run_dir = tmp_path / how
    assert submit(run_dir, "--mode", "fresh", "--yes", slow=True).returncode == 0
    motion_job = job_ids(run_dir)["motion"]
    last = run_dir / "checkpoints" / "motion" / "last.pth"
    wait_for(lambda: checkpoint_epoch(last) >= 1, 300, "motion epoch 1")
    signalled_at = time.monotonic()
    if how == "usr2":
        subprocess.run(["scancel", "--signal=USR2", motion_job], check=True)
    else:
        subprocess.run(["scontrol", "requeue", motion_job], check=True)
    slurm_cluster.wait_until_requeued(motion_job, timeout=120)
    log = run_dir / "logs" / "motion" / "train.log"
    wait_for(lambda: "resuming from last.pth" in log.read_text(), 300, "motion to resume")
    round_trip = time.monotonic() - signalled_at
    report = wait_all_done(run_dir)
    text = log.read_text()
    stopped_epoch = checkpoint_epoch(last)
    assert "resuming from last.pth at epoch" in text and "at epoch 1 (" not in text
    assert report["stages"]["motion"]["requeues"] >= 1 and report["stages"]["motion"]["attempts"] == 2
    assert report["stages"]["motion"]["job_id"] == motion_job, "a requeued job keeps its id"
    assert_same_weights(model_weights(last), model_weights(reference / "checkpoints" / "motion" / "last.pth"))
    print(f"{how}: signal -> training again in {round_trip:.1f}s; final epoch {stopped_epoch}")


def test_failed_stage_stops_dependants_and_resume_finishes(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "fail"
    bad = run_dir / "checkpoints" / "registration" / "last.pth"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")  # registration will refuse it, loudly
    assert submit(run_dir, "--mode", "resume").returncode == 0
    ids = job_ids(run_dir)
    slurm_cluster.wait_for(ids["registration"], {"FAILED"}, timeout=300)
    seg = slurm_cluster.wait_for(ids["segmentation"], {"CANCELLED"}, timeout=120)
    assert seg.start is None or seg.start == seg.end, "segmentation must never run"
    report = status(run_dir)
    info = report["stages"]["registration"]
    assert info["status"] == "failed" and "last.pth" in (info["error"] or "")
    assert info["log"].endswith("logs/registration/train.log")
    assert "FAILED:" in Path(info["log"]).read_text().splitlines()[-1]
    assert report["stages"]["segmentation"]["status"] == "failed"  # its job was cancelled
    bad.unlink()  # the user fixes the cause
    wait_for(lambda: status(run_dir)["stages"]["motion"]["status"] == "done", 300, "motion done")
    assert submit(run_dir, "--mode", "resume").returncode == 0
    wait_all_done(run_dir)


def test_resume_while_in_flight_submits_no_duplicate(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "dup"
    assert submit(run_dir, "--mode", "fresh", "--yes").returncode == 0
    first = job_ids(run_dir)
    again = submit(run_dir, "--mode", "resume")
    assert again.returncode == 0, again.stderr
    assert "no duplicate submitted" in again.stdout
    assert job_ids(run_dir) == first
    wait_all_done(run_dir)
    names = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobName", "-j", ",".join(first.values())],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(names) == len(set(names)) == 4


def test_resume_replaces_queued_jobs_whose_data_must_be_rebuilt(slurm_cluster, tmp_path: Path) -> None:
    """A live job that waits on (or reads) a stage which reruns is stale: resume cancels it and submits
    a new one after the new data job, instead of keeping it (it would train on the old, vanishing cache)."""
    run_dir = tmp_path / "stale"
    assert submit(run_dir, "--mode", "fresh", "--yes").returncode == 0
    first = job_ids(run_dir)
    held = [first["motion"], first["registration"], first["segmentation"]]
    # surely still queued at the resume (a running one could fail on the deleted file and take its
    # dependants with it before the resume looks)
    subprocess.run(["scontrol", "hold", *held], check=True, timeout=60)
    wait_for(lambda: status(run_dir)["stages"]["data"]["status"] == "done", 300, "data done")
    cache = RunLayout(run_dir).cache_dir
    next(cache.glob("*.npz")).unlink()  # the user's scratch lost a file: the data stage must run again
    again = submit(run_dir, "--mode", "resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "cancelled stale jobs" in again.stdout and all(job in again.stdout for job in held), again.stdout
    second = job_ids(run_dir)
    assert second["data"] != first["data"]
    assert all(second[s] != first[s] for s in ("motion", "registration", "segmentation")), (first, second)
    assert f"afterok:{second['data']}" in again.stdout, "the new model jobs wait on the new data job"
    for job in held:
        slurm_cluster.wait_for(job, {"CANCELLED"}, timeout=60)
    wait_all_done(run_dir)


def test_fresh_cancels_in_flight_jobs_and_cancel_records_it(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "cancel"
    assert submit(run_dir, "--mode", "fresh", "--yes").returncode == 0
    first = job_ids(run_dir)
    again = submit(run_dir, "--mode", "fresh", "--yes")
    assert again.returncode == 0 and "cancelled in-flight jobs" in again.stdout, again.stdout + again.stderr
    second = job_ids(run_dir)
    assert not set(first.values()) & set(second.values())
    for job in (first["motion"], first["segmentation"]):
        assert slurm_cluster.wait_for(job, timeout=60).state == "CANCELLED"
    result = run_module("mi_pipeline.cancel", "--run-dir", str(run_dir))
    assert result.returncode == 0 and "cancelled:" in result.stdout
    report = status(run_dir)
    assert all(i["status"] != "running" for i in report["stages"].values())
    assert any("cancelled" in (i["error"] or "") for i in report["stages"].values())


def test_two_task_ddp_stage_requeues_and_resumes(slurm_cluster, tmp_path: Path) -> None:
    """gpus_per_node > 1 becomes N tasks of one DDP job; here 2 CPU tasks with gloo."""
    run_dir = tmp_path / "ddp"
    assert submit(run_dir, "--mode", "fresh", "--yes", "--set", "slurm.motion.tasks_per_node=2",
                  slow=True).returncode == 0
    motion_job = job_ids(run_dir)["motion"]
    script = next((run_dir / "logs" / "slurm").glob(f"{motion_job}/*_submission.sh")).read_text()
    assert "--ntasks-per-node=2" in script
    last = run_dir / "checkpoints" / "motion" / "last.pth"
    wait_for(lambda: checkpoint_epoch(last) >= 1, 300, "motion epoch 1")
    subprocess.run(["scancel", "--signal=USR2", motion_job], check=True)
    slurm_cluster.wait_until_requeued(motion_job, timeout=120)
    report = wait_all_done(run_dir)
    log = (run_dir / "logs" / "motion" / "train.log").read_text()
    assert "data parallel: rank 0 of 2" in log and "rank 1" not in log, "rank 0 alone writes the log"
    assert "resuming from last.pth at epoch" in log
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "logs/motion/metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, report["stages"]["motion"]["epochs"] + 1))
    assert report["stages"]["motion"]["requeues"] >= 1


def test_requeue_cap_fails_the_job_clearly(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "cap"
    assert submit(run_dir, "--mode", "fresh", "--yes", "--set", "slurm.max_requeues=0", slow=True).returncode == 0
    ids = job_ids(run_dir)
    last = run_dir / "checkpoints" / "motion" / "last.pth"
    wait_for(lambda: checkpoint_epoch(last) >= 1, 300, "motion epoch 1")
    subprocess.run(["scancel", "--signal=USR2", ids["motion"]], check=True)
    slurm_cluster.wait_for(ids["motion"], {"FAILED"}, timeout=120)
    slurm_cluster.wait_for(ids["segmentation"], {"CANCELLED"}, timeout=120)
    info = status(run_dir)["stages"]["motion"]
    assert info["status"] == "failed" and "max_requeues=0" in (info["error"] or ""), info
    assert checkpoint_epoch(last) >= 1, "the saved progress is kept for a later resume"


def queued_names(run_dir: Path) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, timeout=60).stdout
    return [n for n in out.split() if n.startswith(f"mi_{run_dir.name}_")]


def test_a_request_no_node_can_meet_is_one_line_and_nothing_is_submitted(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "toobig"
    result = run_module("mi_pipeline.submit", "--config", str(TINY), "--run-dir", str(run_dir), "--executor", "slurm",
                        "--mode", "fresh", "--yes", "--set", "slurm.gpus_per_node=0", "--set", "slurm.cpus_per_task=64",
                        timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: slurm.cpus_per_task") and "at most" in result.stderr
    gpu = run_module("mi_pipeline.submit", "--config", str(TINY), "--run-dir", str(run_dir), "--executor", "slurm",
                     "--mode", "fresh", "--yes", "--set", "slurm.cpus_per_task=1", "--set", "slurm.mem_gb=1", timeout=120)
    assert gpu.returncode == 2 and "slurm.gpus_per_node" in gpu.stderr and "no GPUs" in gpu.stderr, gpu.stderr
    assert queued_names(run_dir) == []


def test_a_stage_sbatch_refuses_cancels_the_jobs_already_submitted(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "refused"
    result = submit(run_dir, "--mode", "fresh", "--yes", "--set", "slurm.motion.constraint=nosuchfeature")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "sbatch refused the motion job" in result.stderr and "Traceback" not in result.stderr
    wait_for(lambda: queued_names(run_dir) == [], 60, "the data job submitted before motion to be cancelled")
    report = status(run_dir)["stages"]
    assert report["motion"]["status"] == "failed" and "sbatch refused" in report["motion"]["error"]
    assert report["data"]["status"] == "not_started", report["data"]


@pytest.mark.slow
def test_fresh_while_jobs_run_leaves_no_trace_of_the_old_run(slurm_cluster, tmp_path: Path) -> None:
    """The cancelled motion job saves its position on SIGTERM; fresh waits for it before deleting (case 2)."""
    run_dir = tmp_path / "refresh"
    assert submit(run_dir, "--mode", "fresh", "--yes", slow=True).returncode == 0
    wait_for(lambda: checkpoint_epoch(run_dir / "checkpoints" / "motion" / "last.pth") >= 2, 300, "motion epoch 2")
    again = submit(run_dir, "--mode", "fresh", "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not (run_dir / "checkpoints" / "motion" / "last.pth").exists(), "the cancelled job wrote into the new run"
    wait_all_done(run_dir)
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "logs" / "motion" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1)), epochs
    assert "resuming from last.pth" not in (run_dir / "logs" / "motion" / "train.log").read_text()


@pytest.mark.slow
def test_demo_config_runs_on_a_small_cpu_cluster_without_resource_overrides(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    short = ["--set", "motion.epochs=1", "--set", "registration.epochs=1", "--set", "segmentation.epochs=1",
             "--set", "data.phantom.subjects=5"]
    result = run_module("mi_pipeline.submit", "--config", str(REPO / "configs" / "demo.yaml"), "--run-dir",
                        str(run_dir), "--executor", "slurm", "--mode", "fresh", "--yes", *short, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert wait_all_done(run_dir, timeout=900)["state"] == "all_completed"


@pytest.mark.slow
def test_skip_mode_job_requeued_twice_by_slurm_continues_and_never_restarts(reference: Path, slurm_cluster,
                                                                             tmp_path: Path) -> None:
    """Under --mode skip every untrained stage is a planned restart; SLURM's own requeues (here
    ``scontrol requeue``, a SIGTERM path) rerun the job's original arguments: it must continue (case 1)."""
    run_dir = tmp_path / "skip_requeue"
    assert submit(run_dir, "--mode", "skip", slow=True).returncode == 0
    motion_job = job_ids(run_dir)["motion"]
    last = run_dir / "checkpoints" / "motion" / "last.pth"
    for reached in (1, 3):
        wait_for(lambda r=reached: checkpoint_epoch(last) >= r, 300, f"motion epoch {reached}")
        subprocess.run(["scontrol", "requeue", motion_job], check=True)
        slurm_cluster.wait_until_requeued(motion_job, timeout=120)
    report = wait_all_done(run_dir)
    text = (run_dir / "logs" / "motion" / "train.log").read_text()
    assert text.count("planned restart") == 1 and text.count("was already carried out") == 2, text
    assert "starting from scratch" not in text.split("was already carried out", 1)[1]
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "logs" / "motion" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, len(epochs) + 1)), f"epochs went back: {epochs}"
    assert report["stages"]["motion"]["job_id"] == motion_job and report["stages"]["motion"]["attempts"] == 3
    assert_same_weights(model_weights(last), model_weights(reference / "checkpoints" / "motion" / "last.pth"))


def test_a_cine_only_run_submits_segmentation_after_motion_alone(slurm_cluster, tmp_path: Path) -> None:
    """No LGE, cine labels (ACDC layout): no registration job; the segmentation job waits on motion's
    job only (an afterok on a job never submitted would hold it forever) and trains the myocardium."""
    import yaml

    from mi_pipeline.data.phantom import generate_subject
    from tests.data.test_adapters import CFG_SET, PARAMS, _acdc

    _acdc(tmp_path / "acdc", [generate_subject(PARAMS, i) for i in range(3)])
    config = yaml.safe_load(TINY.read_text())
    config["data"] = {"format": "acdc", "root": str(tmp_path / "acdc"), "val_fraction": 0.34, "test_fraction": 0.0,
                      **{item.split("=")[0].split(".")[1]: int(float(item.split("=")[1])) if "spacing" not in item
                         else float(item.split("=")[1]) for item in CFG_SET}}
    (tmp_path / "acdc.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    result = run_module("mi_pipeline.submit", "--config", str(tmp_path / "acdc.yaml"), "--run-dir", str(run),
                        "--executor", "slurm", *SLURM_SETTINGS, "--mode", "fresh", "--yes", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    ids = job_ids(run)
    assert set(ids) == {"data", "motion", "segmentation"}, result.stdout
    script = next((run / "logs" / "slurm").glob(f"{ids['segmentation']}/*_submission.sh")).read_text()
    assert f"--dependency=afterok:{ids['motion']}\n" in script, script
    wait_for(lambda: status(run)["stages"]["segmentation"]["status"] in ("done", "failed"), 400, "segmentation")
    report = status(run)
    assert report["stages"]["segmentation"]["status"] == "done", report["stages"]["segmentation"]
    assert report["stages"]["segmentation"]["myocardium_only"]
    assert report["stages"]["registration"]["status"] == "left_out"
    rec = {s: slurm_cluster.wait_for(ids[s], {"COMPLETED"}, timeout=60) for s in ("motion", "segmentation")}
    assert rec["segmentation"].start >= rec["motion"].end
