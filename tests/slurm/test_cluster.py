"""Smoke test of the real local SLURM cluster through submitit (the way mi_pipeline submits).

Two tiny jobs linked by ``afterok`` with ``kill-on-invalid-dep``: both return their results, and
sacct shows that the second did not start before the first ended.
"""

from __future__ import annotations

import time

import pytest

submitit = pytest.importorskip("submitit")


def test_afterok_chain_runs_in_order(slurm_cluster, tmp_path):
    # Defined inside the test so cloudpickle ships them by value (the job cannot import this module).
    def first(x):
        import os
        import socket

        return {"value": x * 2, "job_id": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname()}

    def second(y):
        import os

        return {"value": y + 1, "job_id": os.environ.get("SLURM_JOB_ID")}

    t0 = time.monotonic()
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    assert executor.cluster == "slurm"
    executor.update_parameters(timeout_min=5, cpus_per_task=1, name="mi-test-chain")
    job1 = executor.submit(first, 20)

    executor.update_parameters(
        slurm_additional_parameters={"dependency": f"afterok:{job1.job_id}", "kill-on-invalid-dep": "yes"}
    )
    job2 = executor.submit(second, 41)

    r1 = job1.result()
    r2 = job2.result()
    assert r1["value"] == 40 and r1["job_id"] == str(job1.job_id)
    assert r2 == {"value": 42, "job_id": str(job2.job_id)}

    # A result pickle is not proof the job is finished: wait for sacct to say so.
    rec1 = slurm_cluster.wait_for(job1.job_id, {"COMPLETED"}, timeout=30)
    rec2 = slurm_cluster.wait_for(job2.job_id, {"COMPLETED"}, timeout=30)
    assert rec1.end is not None and rec2.start is not None
    assert rec2.start >= rec1.end, f"job2 started {rec2.start} before job1 ended {rec1.end}"

    # submitit's generated script carries what the pipeline relies on.
    script = job2.paths.submission_file.read_text()
    assert f"--dependency=afterok:{job1.job_id}" in script
    assert "--kill-on-invalid-dep=yes" in script
    assert "--signal=USR2@" in script
    assert time.monotonic() - t0 < 60
