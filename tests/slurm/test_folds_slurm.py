"""k-fold cross-validation on the real cluster (issue 15): folds queued together and running side by
side, one fold requeued by USR2 while the others finish, resume after two folds were cancelled.

2 cores cannot show a speed-up; what is checked is concurrency (sacct start/end) and independence.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

from tests.helpers import checkpoint_epoch, run_module, run_status, wait_folds_done, wait_for
from tests.slurm.test_pipeline_slurm import SLOW, SLURM_SETTINGS, TINY

K = 3
MODELS = ("motion", "registration", "segmentation")


def submit(run_dir: Path, *args: str, slow: bool = False) -> subprocess.CompletedProcess[str]:
    return run_module("mi_pipeline.submit", "--config", str(TINY), "--run-dir", str(run_dir), "--executor",
                      "slurm", *SLURM_SETTINGS, *args, timeout=120, extra_env=SLOW if slow else None)


def fold_jobs(run_dir: Path) -> dict[str, dict[str, str]]:
    """fold -> stage -> job id, from each fold's record."""
    report = run_status(run_dir)
    return {k: {s: i["job_id"] for s, i in fold["stages"].items() if s in MODELS and i["job_id"]}
            for k, fold in report["folds"].items()}


def submitted_per_fold(stdout: str) -> dict[str, list[str]]:
    """What one submit printed as submitted, per 'fold k:' section."""
    found: dict[str, list[str]] = {}
    fold = None
    for line in stdout.splitlines():
        if match := re.fullmatch(r"fold (\d+):", line.strip()):
            fold = match.group(1)
            found[fold] = []
        elif fold is not None and (match := re.search(r"submitted job (\d+)", line)):
            found[fold].append(match.group(1))
    return found


def test_folds_run_side_by_side_and_usr2_requeues_one_fold_alone(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "cv"
    result = submit(run_dir, "--mode", "fresh", "--yes", "--folds", str(K), "--set", "motion.epochs=6", slow=True)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = fold_jobs(run_dir)
    assert sorted(jobs) == [str(k) for k in range(K)] and all(set(j) == set(MODELS) for j in jobs.values())
    target = jobs["1"]["motion"]
    last = run_dir / "folds" / "1" / "checkpoints" / "motion" / "last.pth"
    wait_for(lambda: checkpoint_epoch(last) >= 1, 300, "fold 1 motion epoch 1")
    subprocess.run(["scancel", "--signal=USR2", target], check=True)
    slurm_cluster.wait_until_requeued(target, timeout=120)
    report = wait_folds_done(run_dir, timeout=600)

    folds = report["folds"]
    assert folds["1"]["stages"]["motion"]["requeues"] >= 1 and folds["1"]["stages"]["motion"]["attempts"] == 2
    assert folds["1"]["stages"]["motion"]["job_id"] == target, "a requeued job keeps its id"
    assert "resuming from last.pth at epoch" in (last.parent.parent.parent / "logs" / "motion" / "train.log").read_text()
    for k in ("0", "2"):  # the other folds never noticed
        info = folds[k]["stages"]["motion"]
        assert (info["requeues"], info["attempts"]) == (0, 1), (k, info)
        assert "resuming" not in (run_dir / "folds" / k / "logs" / "motion" / "train.log").read_text()
    assert (run_dir / "folds" / "1" / ".training_progress").read_text().splitlines()[0] == "all_completed"

    fold_of = {job: k for k, j in jobs.items() for job in j.values()}
    records = {job: slurm_cluster.wait_for(job, {"COMPLETED"}, timeout=60) for job in fold_of}
    submits = [slurm_cluster.sacct_all(job, all_runs=True)[0].submit for job in fold_of]  # first run: before requeues
    assert max(submits) - min(submits) < dt.timedelta(seconds=30), f"queued together: {submits}"
    overlapping = {(fold_of[a.job_id], fold_of[b.job_id]) for a in records.values() for b in records.values()
                   if fold_of[a.job_id] < fold_of[b.job_id] and a.start < b.end and b.start < a.end}
    assert overlapping, f"no two folds' jobs ran at the same time: {records}"
    for j in jobs.values():  # within a fold the chain order holds
        assert records[j["segmentation"]].start >= records[j["motion"]].end
    text = run_module("mi_pipeline.status", "--run-dir", str(run_dir)).stdout
    assert f"folds: {K}" in text and text.split(f"folds: {K}")[1].count("all_completed") == K, text
    assert text.splitlines()[1].startswith("state: all_completed (the least advanced of 3 folds"), text


def test_resume_after_scancel_of_two_folds_resubmits_those_two_only(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "cv_resume"
    result = submit(run_dir, "--mode", "fresh", "--yes", "--folds", str(K), "--set", "motion.epochs=3")
    assert result.returncode == 0, result.stdout + result.stderr
    data_job = run_status(run_dir)["stages"]["data"]["job_id"]
    before = fold_jobs(run_dir)
    # a bad night: fold 0 cancelled through the command, fold 2 by hand; fold 1 carries on
    cancelled = run_module("mi_pipeline.cancel", "--run-dir", str(run_dir), "--fold", "0")
    assert cancelled.returncode == 0 and "cancelled:" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    subprocess.run(["scancel", *before["2"].values()], check=True)
    for job in (*before["0"].values(), *before["2"].values()):
        assert slurm_cluster.wait_for(job, timeout=60).state == "CANCELLED"
    slurm_cluster.wait_for(data_job, {"COMPLETED"}, timeout=300)

    again = submit(run_dir, "--mode", "resume")  # no --folds: the split file says this is a 3-fold run
    assert again.returncode == 0, again.stdout + again.stderr
    submitted = submitted_per_fold(again.stdout)
    assert submitted["1"] == [], f"fold 1 was not cancelled and must get no new job: {again.stdout}"
    assert len(submitted["0"]) == len(submitted["2"]) == 3, again.stdout
    after = fold_jobs(run_dir)
    assert after["1"] == before["1"]
    for k in ("0", "2"):
        assert sorted(after[k].values()) == sorted(submitted[k]) and not set(after[k].values()) & set(before[k].values())
    wait_folds_done(run_dir, timeout=600)


def test_a_refused_fold_job_cancels_every_job_of_the_command(slurm_cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "cv_refused"
    result = submit(run_dir, "--mode", "fresh", "--yes", "--folds", str(K),
                    "--set", "slurm.segmentation.constraint=nosuchfeature")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "sbatch refused the segmentation job" in result.stderr and "cancelled the jobs" in result.stderr
    submitted = re.findall(r"submitted job (\d+)", result.stdout)
    assert len(submitted) == 3, result.stdout  # data, fold 0's motion and registration, then the refusal
    for job in submitted:
        assert slurm_cluster.wait_for(job, timeout=60).state == "CANCELLED"
    report = run_status(run_dir)
    assert report["stages"]["data"]["status"] == "not_started", "the top record forgets the cancelled data job"
    fold0 = report["folds"]["0"]["stages"]
    assert fold0["motion"]["status"] == fold0["registration"]["status"] == "not_started"
    assert fold0["segmentation"]["status"] == "failed" and "sbatch refused" in fold0["segmentation"]["error"]
