"""Cohort predict: shards, resume without computing twice, failed subjects in the table, the table itself."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mi_pipeline import cohort
from mi_pipeline.cli import predict
from mi_pipeline.cli.common import run_main
from mi_pipeline.config import PhantomConfig, load_config
from mi_pipeline.data.phantom import generate_subject, write_subject
from tests.test_inference import TINY, save_untrained


@pytest.fixture(scope="module")
def cines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cohort")
    save_untrained(load_config(TINY), tmp / "run" / "checkpoints")
    params = PhantomConfig(subjects=4, seed=5, size=64, slices=3, frames=8)
    for i in range(4):
        write_subject(generate_subject(params, i), tmp / "data" / f"c{i}")
    (tmp / "data" / "c9").mkdir()
    (tmp / "data" / "c9" / "cine.nii.gz").write_bytes(b"not a nifti")  # a broken cine: failed, not fatal
    return tmp


def events(out: Path) -> list[tuple[str, str]]:
    lines = (out / cohort.STATE_DIR / "computed.log").read_text().splitlines()
    return [(line.split()[1], line.split()[2]) for line in lines]


def table(out: Path) -> list[dict[str, str]]:
    with open(out / cohort.TABLE) as handle:
        return list(csv.DictReader(handle))


def test_cohort_resumes_without_computing_twice(cines: Path, capsys) -> None:
    out = cines / "out"
    base = ["--cohort", "--cine", str(cines / "data"), "--out", str(out), "--run-dir", str(cines / "run")]
    assert run_main(predict.main, [*base, "--shard", "0/2"]) == 0  # one worker of two: c0, c2, c9
    assert sorted(r["subject"] for r in table(out)) == ["c0", "c2", "c9"]
    first = {sid: cohort.read_done(out, sid)["finished"] for sid in ("c0", "c2")}
    assert run_main(predict.main, [*base, "--executor", "local", "--jobs", "2"]) == 0  # the rest, resumed
    rows = table(out)
    assert [r["subject"] for r in rows] == ["c0", "c1", "c2", "c3", "c9"]
    assert {sid: cohort.read_done(out, sid)["finished"] for sid in ("c0", "c2")} == first  # not redone
    done = [sid for event, sid in events(out) if event == "done"]
    assert sorted(done) == ["c0", "c1", "c2", "c3", "c9"]  # each computed exactly once
    ok = [r for r in rows if r["subject"] != "c9"]
    assert all(0.0 <= float(r["infarct_percent"]) <= 100.0 and float(r["myocardium_ml"]) >= 0 for r in ok)
    assert rows[-1]["flags"].startswith("failed: ") and "c9" in rows[-1]["flags"]
    assert (out / "c1" / "report.json").is_file() and not list(out.glob(".cohort.csv.*.tmp"))
    assert run_main(predict.main, base) == 0  # all done: nothing to compute
    assert len([e for e in events(out) if e[0] == "start"]) == 5


def test_shard_is_a_fixed_slice_of_the_whole_list() -> None:
    subjects = [(f"s{i}", Path(f"/x/s{i}")) for i in (3, 0, 2, 1, 4)]
    parts = [cohort.shard(subjects, i, 2) for i in range(2)]
    assert [s for s, _ in parts[0]] == ["s0", "s2", "s4"] and [s for s, _ in parts[1]] == ["s1", "s3"]
    with pytest.raises(Exception, match="--shard 2/2"):
        cohort.shard(subjects, 2, 2)


def test_array_script_runs_each_shard_with_the_slurm_settings(tmp_path: Path) -> None:
    from mi_pipeline.orchestration.cohort_jobs import array_script

    worker = ["/usr/bin/python3", "-m", "mi_pipeline.predict", "--cohort", "--out", str(tmp_path / "o p")]
    logs = tmp_path / "out" / ".cohort" / "logs"
    cfg = load_config(None, ["slurm.partition=cpu", "slurm.cpus_per_task=2", "slurm.setup=[module load x]"])
    script = array_script(worker, 4, cfg, logs, max_running=2)
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --partition=cpu" in script
    assert "#SBATCH --cpus-per-task=2" in script and f"#SBATCH --output={logs}/%A_%a.out" in script
    assert "module load x\n" in script
    assert script.rstrip().endswith(f"exec /usr/bin/python3 -m mi_pipeline.predict --cohort --out '{tmp_path / 'o p'}' "
                                    '--shard "$SLURM_ARRAY_TASK_ID/4"')
    image = tmp_path / "mi.sif"
    image.write_bytes(b"")
    boxed = array_script(worker, 4, load_config(None, [f"container.image={image}"]), logs, 0, (tmp_path / "cines",))
    last = boxed.rstrip().splitlines()[-1]
    assert last.startswith("exec apptainer exec") and f"-B {tmp_path / 'out'}" in last
    assert f"-B {tmp_path / 'cines'}" in last and f"{image} python -m mi_pipeline.predict" in last
    assert "/usr/bin/python3" not in last and "%" not in boxed.split("--array=")[1].split("\n")[0]


def test_a_subject_held_by_another_worker_is_left_to_it(tmp_path: Path) -> None:
    from filelock import FileLock

    out, calls = tmp_path / "out", []
    subjects = [("a", tmp_path / "a.nii.gz"), ("b", tmp_path / "b.nii.gz")]

    def fake_predict(sid: str, cine: Path) -> dict:
        calls.append(sid)
        return {"infarct_percent": 1.0, "myocardium_ml": 2.0, "infarct_ml": 0.02, "cine": str(cine)}

    (out / cohort.STATE_DIR / "locks").mkdir(parents=True)
    with FileLock(str(out / cohort.STATE_DIR / "locks" / "a.lock")):  # another worker is computing "a"
        counts = cohort.run_shard(subjects, out, fake_predict)
    assert calls == ["b"] and counts == {"computed": 1, "skipped": 0, "failed": 0, "busy": 1}
    assert cohort.read_done(out, "a") is None and cohort.read_done(out, "b")["status"] == "ok"
    assert cohort.run_shard(subjects, out, fake_predict)["computed"] == 1 and calls == ["b", "a"]
    assert cohort.write_table(out, subjects) == 2
