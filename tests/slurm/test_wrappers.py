"""The plain-sbatch wrappers in slurm/, for real on the local cluster (no container, no submitit).

- slurm/submit_chain.sh submits data -> motion || registration -> segmentation; the chain completes
  in dependency order and the job ids land in the same progress record the Python submitter uses;
- USR2 to a stage's batch shell (what --signal=B:USR2@120 sends before the time limit) makes it
  save, requeue itself and resume from last.pth with the same job id, ending with the same weights
  as the uninterrupted chain; the Python submitter, run meanwhile, submits no duplicate;
- slurm/submit_resume.sbatch runs the Python submitter as a CPU job and the run completes;
- a fold's chain replaces its jobs queued before the shared data job it must now follow.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.progress import ProgressFile
from tests.helpers import (
    REPO,
    assert_same_weights,
    checkpoint_epoch,
    env,
    model_weights,
    run_module,
    run_status,
    wait_all_done,
    wait_for,
)

TINY = REPO / "tests" / "configs" / "tiny.yaml"
SBATCH_OPTIONS = ["--cpus-per-task=1", "--mem=1G", "--time=20"]
SLOW = {"MI_PIPELINE_TEST_SLOW_WRITE_S": "0.6"}  # test-only: each atomic write sleeps, so a signal lands mid-stage
STAGES = ("data", "motion", "registration", "segmentation")


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    variables = env()  # PYTHONPATH -> this checkout; sbatch exports it to the jobs
    variables["MI_PYTHON"] = sys.executable
    variables.update(extra or {})
    return variables


def submit_chain(run_dir: Path, extra_env: dict[str, str] | None = None,
                 ) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
    result = subprocess.run(["bash", str(REPO / "slurm" / "submit_chain.sh"), str(TINY), str(run_dir),
                             *SBATCH_OPTIONS], env=job_env(extra_env), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    ids = dict(line.split() for line in result.stdout.splitlines() if line.strip())
    return ids, result


def executor(run_dir: Path, stage: str) -> str | None:
    return ProgressFile(run_dir).read().stages[stage].executor


def slurm_outputs(run_dir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((run_dir / "logs" / "slurm").glob("*.out")))


@pytest.fixture(scope="module")
def chain_run(slurm_cluster, tmp_path_factory) -> tuple[Path, dict[str, str], float]:
    run_dir = tmp_path_factory.mktemp("wrapper_chain")
    started = time.monotonic()
    ids, _ = submit_chain(run_dir)
    wait_all_done(run_dir, explain=lambda: slurm_outputs(run_dir))
    return run_dir, ids, time.monotonic() - started


def test_chain_completes_in_dependency_order_on_the_shared_record(chain_run, slurm_cluster) -> None:
    run_dir, ids, seconds = chain_run
    assert set(ids) == set(STAGES)
    rec = {s: slurm_cluster.wait_for(j, {"COMPLETED"}, timeout=60) for s, j in ids.items()}
    for stage, upstream in (("motion", "data"), ("registration", "data"), ("segmentation", "motion"),
                            ("segmentation", "registration")):
        assert rec[stage].start >= rec[upstream].end, f"{stage} started before {upstream} ended"
    report = run_status(run_dir)
    for stage, job in ids.items():
        info = report["stages"][stage]
        assert info["status"] == "done" and info["attempts"] == 1 and executor(run_dir, stage) == "slurm"
        assert info["job_id"] == job, "the record shows the wrapper's job id (SLURM_JOB_ID flows into the job)"
        out = run_dir / "logs" / "slurm" / f"mi-{stage}-{job}.out"
        assert f"{stage} finished with exit status 0" in out.read_text()
    assert report["stages"]["motion"]["epoch"] == report["stages"]["motion"]["epochs"]
    # A second run of the driver on a finished run submits nothing.
    again, result = submit_chain(run_dir)
    assert again == {} and "nothing to do" in result.stderr, result.stderr
    print(f"wrapper chain: submit -> all_completed in {seconds:.0f}s")


def test_usr2_requeues_the_stage_which_resumes_and_matches_the_uninterrupted_run(
        chain_run, slurm_cluster, tmp_path: Path) -> None:
    reference = chain_run[0]
    run_dir = tmp_path / "usr2"
    ids, _ = submit_chain(run_dir, extra_env=SLOW)
    motion = ids["motion"]

    # Signal as soon as motion has a checkpoint (load on the machine must not let it finish first).
    last = run_dir / "checkpoints" / "motion" / "last.pth"
    wait_for(lambda: checkpoint_epoch(last) >= 1, 300, "motion epoch 1")
    signalled = time.monotonic()
    subprocess.run(["scancel", "--signal=USR2", "--batch", motion], check=True)  # as --signal=B:USR2@...
    slurm_cluster.wait_until_requeued(motion, timeout=120)

    # Switching submitters mid-run (motion requeued, segmentation waiting on it): the Python submitter
    # sees the wrapper's jobs and submits nothing; the driver, run again, keeps every unfinished job.
    again = run_module("mi_pipeline.submit", "--mode", "resume", "--executor", "slurm", "--config", str(TINY),
                       "--run-dir", str(run_dir), "--set", "slurm.gpus_per_node=0", timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "submitted job" not in again.stdout, again.stdout
    assert {s: i["job_id"] for s, i in run_status(run_dir)["stages"].items()} == ids
    unfinished = {s for s, i in run_status(run_dir)["stages"].items() if i["status"] != "done"}
    assert {"motion", "segmentation"} <= unfinished
    kept, result = submit_chain(run_dir)
    finished_meanwhile = {s for s, i in run_status(run_dir)["stages"].items() if i["status"] == "done"}
    assert kept.items() <= ids.items(), result.stdout + result.stderr  # nothing new submitted
    assert set(kept) >= unfinished - finished_meanwhile, result.stderr

    log = run_dir / "logs" / "motion" / "train.log"
    wait_for(lambda: "resuming from last.pth" in log.read_text(), 300, "motion to resume")
    round_trip = time.monotonic() - signalled

    report = wait_all_done(run_dir, explain=lambda: slurm_outputs(run_dir))
    text = log.read_text()
    resumed_at = [int(n) for n in re.findall(r"resuming from last\.pth at epoch (\d+)", text)]
    assert resumed_at and resumed_at[-1] > 1, text
    assert "received SIGUSR2" in text
    info = report["stages"]["motion"]
    assert info["job_id"] == motion and info["attempts"] == 2 and info["requeues"] >= 1, info
    out = (run_dir / "logs" / "slurm" / f"mi-motion-{motion}.out").read_text()
    assert f"requeueing job {motion}" in out and "motion finished with exit status 0" in out, out
    runs = slurm_cluster.sacct_all(motion, all_runs=True)
    assert [r.state for r in runs if r.job_id == motion][-2:] == ["REQUEUED", "COMPLETED"], runs
    assert_same_weights(model_weights(last), model_weights(reference / "checkpoints" / "motion" / "last.pth"))
    print(f"wrapper USR2: signal -> training again in {round_trip:.1f}s; resumed at epoch {resumed_at[-1]}")


def test_submit_resume_sbatch_runs_the_python_submitter_as_a_job(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "via_job"
    run_dir.mkdir()
    out = run_dir / "submit.out"
    started = time.monotonic()
    result = subprocess.run(
        ["sbatch", "--parsable", f"--output={out}", "--cpus-per-task=1", "--mem=1G",
         str(REPO / "slurm" / "submit_resume.sbatch"), str(TINY), str(run_dir),
         "--set", "slurm.gpus_per_node=0", "--set", "slurm.cpus_per_task=1", "--set", "slurm.mem_gb=1",
         "--set", "slurm.time_min=20", "--set", "motion.epochs=3"],
        env=job_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    submitter = result.stdout.strip().split(";")[0]
    record = slurm_cluster.wait_for(submitter, timeout=180)
    assert record.state == "COMPLETED", out.read_text() if out.exists() else record
    assert "plan (mode resume, executor slurm)" in out.read_text()
    report = wait_all_done(run_dir, explain=lambda: slurm_outputs(run_dir))
    jobs = {s: i["job_id"] for s, i in report["stages"].items()}
    assert all(jobs.values()) and submitter not in jobs.values()
    assert all(executor(run_dir, s) == "slurm" for s in STAGES)
    print(f"submit_resume.sbatch: submit -> all_completed in {time.monotonic() - started:.0f}s")


def test_a_refused_sbatch_cancels_what_this_call_submitted_and_says_so(slurm_cluster, tmp_path: Path) -> None:
    """sbatch accepts data and refuses motion (here: an sbatch on PATH that refuses mi-motion and passes
    everything else to the real one): the data job is cancelled, the record says what happened, exit 1."""
    shim = tmp_path / "bin"
    shim.mkdir()
    real = subprocess.run(["bash", "-c", "command -v sbatch"], capture_output=True, text=True).stdout.strip()
    (shim / "sbatch").write_text(f'#!/bin/bash\nfor a in "$@"; do [[ "$a" == --job-name=mi-motion ]] && '
                                 f'{{ echo "sbatch: error: Invalid account" >&2; exit 1; }}; done\nexec {real} "$@"\n')
    (shim / "sbatch").chmod(0o755)
    run_dir = tmp_path / "run"
    variables = job_env()
    variables["PATH"] = f"{shim}:{variables['PATH']}"
    result = subprocess.run(["bash", str(REPO / "slurm" / "submit_chain.sh"), str(TINY), str(run_dir), *SBATCH_OPTIONS],
                            env=variables, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sbatch refused the motion job" in result.stderr and "cancelled the jobs" in result.stderr
    data_job = re.search(r"cancelled the jobs this call had submitted: (\d+)", result.stderr).group(1)
    wait_for(lambda: subprocess.run(["squeue", "-h", "-j", data_job], capture_output=True, text=True).stdout.strip() == "",
             60, "the cancelled data job to leave the queue")
    record = ProgressFile(run_dir).read().stages
    assert record["motion"].status == "failed" and "sbatch refused" in record["motion"].error
    assert record["data"].job_id != data_job or record["data"].status != "pending", "no pending job that never runs"


def test_the_wrappers_take_a_fold(slurm_cluster, tmp_path: Path) -> None:
    """k-fold (issue 15): the chain without --fold is the shared data job; with --fold k, fold k's models."""
    import yaml

    from tests.helpers import wait_folds_done

    raw = yaml.safe_load(TINY.read_text())
    raw["cv"], raw["motion"]["epochs"] = {"folds": 2}, 2  # as short as a chain gets
    config = tmp_path / "cv.yaml"
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"

    def chain(*fold: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(REPO / "slurm" / "submit_chain.sh"), *fold, str(config), str(run_dir),
                               *SBATCH_OPTIONS], env=job_env(), capture_output=True, text=True, timeout=180)

    top = chain()
    assert top.returncode == 0, top.stdout + top.stderr
    data_job = dict(line.split() for line in top.stdout.splitlines())["data"]
    assert top.stdout.split() == ["data", data_job], "without --fold only the shared data stage is submitted"
    printed = {}
    for k in ("0", "1"):
        result = chain("--fold", k)
        assert result.returncode == 0, result.stdout + result.stderr
        printed[k] = {s: j for s, j in (line.split() for line in result.stdout.splitlines()) if s != "data"}
        assert set(printed[k]) == {"motion", "registration", "segmentation"}
    report = wait_folds_done(run_dir)
    data_end = slurm_cluster.wait_for(data_job, {"COMPLETED"}, timeout=60).end
    for k, jobs in printed.items():
        fold = report["folds"][k]
        assert {s: fold["stages"][s]["job_id"] for s in jobs} == jobs, "the fold's record holds its chain's jobs"
        assert slurm_cluster.wait_for(jobs["motion"], {"COMPLETED"}, timeout=60).start >= data_end
        assert list((run_dir / "folds" / k / "logs" / "slurm").glob("mi-motion-*.out")), "job output in the fold"
    assert run_status(run_dir)["stages"]["motion"]["status"] == "not_started", "no model trains at the top"
    bad = chain("--fold", "2")
    assert bad.returncode != 0 and "--fold 2: out of range" in bad.stderr


def test_a_fold_chain_replaces_its_jobs_queued_before_the_data_job_it_must_follow(slurm_cluster,
                                                                                  tmp_path: Path) -> None:
    """The top chain resubmitted the shared data job (a cache file lost); the fold's jobs, queued after
    the old one, never wait on the new one: --fold k cancels them and submits new ones after it."""
    import yaml

    raw = yaml.safe_load(TINY.read_text())
    raw["cv"], raw["motion"]["epochs"] = {"folds": 2}, 2
    config = tmp_path / "cv.yaml"
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"

    def chain(*fold: str, sbatch: tuple[str, ...] = ()) -> dict[str, str]:
        result = subprocess.run(["bash", str(REPO / "slurm" / "submit_chain.sh"), *fold, str(config), str(run_dir),
                                 *SBATCH_OPTIONS, *sbatch], env=job_env(), capture_output=True, text=True,
                                timeout=400)
        assert result.returncode == 0, result.stdout + result.stderr
        return dict(line.split()[:2] for line in result.stdout.splitlines() if line.strip())

    first_data = chain()["data"]
    old = {k: chain("--fold", k) for k in ("0", "1")}
    held = [job for jobs in old.values() for stage, job in jobs.items() if stage != "data"]
    subprocess.run(["scontrol", "hold", *held], check=True, timeout=60)
    slurm_cluster.wait_for(first_data, {"COMPLETED"}, timeout=300)
    next(RunLayout(run_dir).cache_dir.glob("*.npz")).unlink()  # the data stage must run again
    new_data = chain(sbatch=("--hold",))["data"]  # submitted held: still queued when the folds look
    assert new_data != first_data
    new = {k: chain("--fold", k) for k in ("0", "1")}
    for k in ("0", "1"):
        for stage in ("motion", "registration", "segmentation"):
            assert new[k][stage] != old[k][stage], (k, stage, old[k], new[k])
            slurm_cluster.wait_for(old[k][stage], {"CANCELLED"}, timeout=60)
        shown = subprocess.run(["scontrol", "show", "job", new[k]["motion"]], capture_output=True, text=True,
                               timeout=60).stdout
        assert f"afterok:{new_data}" in shown, shown
    subprocess.run(["scontrol", "release", new_data], check=True, timeout=60)
    from tests.helpers import wait_folds_done

    report = wait_folds_done(run_dir)
    for k in ("0", "1"):
        assert report["folds"][k]["stages"]["segmentation"]["job_id"] == new[k]["segmentation"]
