"""Cohort predict: shards, resume without computing twice, failed subjects in the table, the table itself."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mi_pipeline import cohort
from mi_pipeline.cli import predict
from mi_pipeline.cli.common import run_main
from mi_pipeline.clinical.trust import VERDICTS
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
    # a row read alone says how far to trust it: the verdict, the AHA numbering used, what the model learnt from
    for row in ok:
        report = json.loads((out / row["subject"] / "report.json").read_text())
        assert row["verdict"] == report["trust"]["verdict"] and row["verdict"] in VERDICTS
        assert row["model"] == report["trust"]["model"]["summary"] and "phantom only" in row["model"]
        assert row["aha_numbering"] in ("rv_insertion", "fixed_angle")
    assert rows[-1]["verdict"] == "" and rows[-1]["model"] == ""  # a failed subject has no number to judge
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

    cohort.lock_path(out, "a").parent.mkdir(parents=True)
    with FileLock(str(cohort.lock_path(out, "a"))):  # another worker is computing "a"
        counts = cohort.run_shard(subjects, out, fake_predict)
    assert calls == ["b"] and counts == {"computed": 1, "skipped": 0, "failed": 0, "busy": 1}
    assert cohort.read_done(out, "a") is None and cohort.read_done(out, "b")["status"] == "ok"
    assert cohort.run_shard(subjects, out, fake_predict)["computed"] == 1 and calls == ["b", "a"]
    assert cohort.write_table(out, subjects, ()) == (2, 0)


def _fake_report(cine: Path) -> dict:
    return {"infarct_percent": 1.0, "myocardium_ml": 2.0, "infarct_ml": 0.02, "cine": str(cine)}


def test_the_table_is_written_from_records_read_under_its_lock(tmp_path: Path) -> None:
    """A worker that waits for the table lock must not then write a table older than the one it waits on."""
    import threading

    from filelock import FileLock

    out = tmp_path / "out"
    subjects = [("a", tmp_path / "a.nii.gz"), ("b", tmp_path / "b.nii.gz")]
    for sid, cine in subjects:
        cine.write_bytes(sid.encode())
    cohort.run_shard(subjects[:1], out, lambda sid, cine: _fake_report(cine))
    lock = FileLock(str(out / cohort.STATE_DIR / "table.lock"))
    with lock:  # another worker is writing the table; meanwhile "b" finishes
        writer = threading.Thread(target=cohort.write_table, args=(out, subjects, ()))
        writer.start()
        writer.join(0.5)
        cohort.run_shard(subjects[1:], out, lambda sid, cine: _fake_report(cine))
    writer.join(30)
    assert [r["subject"] for r in table(out)] == ["a", "b"]


def test_any_subject_name_and_any_error_is_one_failed_row(tmp_path: Path) -> None:
    """A 252-character subject name (legal for a folder, too long for '<name>.lock') and a predict that
    raises something other than UserError each end as that subject's row; the worker goes on."""
    out = tmp_path / "out"
    long_name = "s" * 252
    subjects = [(long_name, tmp_path / "long.nii.gz"), ("boom", tmp_path / "boom.nii.gz"),
                ("z", tmp_path / "z.nii.gz")]
    for _, cine in subjects:
        cine.write_bytes(cine.name.encode())

    def predict_or_crash(sid: str, cine: Path) -> dict:
        if sid == "boom":
            raise RuntimeError("CUDA error: an illegal memory access")
        return _fake_report(cine)

    counts = cohort.run_shard(subjects, out, predict_or_crash, log=lambda line: None)
    assert counts == {"computed": 2, "skipped": 0, "failed": 1, "busy": 0}
    assert cohort.read_done(out, long_name)["status"] == "ok" and cohort.read_done(out, "z")["status"] == "ok"
    failed = cohort.read_done(out, "boom")
    assert failed["status"] == "failed" and "RuntimeError: CUDA error" in failed["flags"]
    assert all(len(p.name) < 100 for p in (out / cohort.STATE_DIR / "locks").iterdir())


def test_rows_are_recomputed_for_another_model_or_input_and_failed_ones_on_request(tmp_path: Path) -> None:
    out = tmp_path / "out"
    subjects = [("a", tmp_path / "a.nii.gz"), ("b", tmp_path / "b.nii.gz")]
    for sid, cine in subjects:
        cine.write_bytes(sid.encode())
    calls: list[str] = []

    def predict(sid: str, cine: Path) -> dict:
        calls.append(sid)
        if cine.read_bytes() == b"broken":
            raise cohort.UserError(f"{cine}: not a NIfTI file")
        return _fake_report(cine)

    model_1, model_2 = ["fp-seg-1"], ["fp-seg-2"]
    assert cohort.run_shard(subjects, out, predict, models=model_1)["computed"] == 2
    assert cohort.run_shard(subjects, out, predict, models=model_1)["skipped"] == 2 and calls == ["a", "b"]
    assert cohort.read_done(out, "a")["models"] == model_1
    assert cohort.pending(out, subjects, models=model_2) == ["a", "b"]
    assert cohort.run_shard(subjects, out, predict, models=model_2)["computed"] == 2  # a new model: all again
    subjects[1][1].write_bytes(b"broken")  # b's input changed: b again (and it fails)
    assert cohort.run_shard(subjects, out, predict, models=model_2, log=lambda line: None)["failed"] == 1
    assert calls == ["a", "b", "a", "b", "b"]
    assert cohort.run_shard(subjects, out, predict, models=model_2)["skipped"] == 2  # a failed row stays...
    assert cohort.pending(out, subjects, models=model_2, retry_failed=True) == ["b"]
    subjects_fixed = subjects  # ...until asked: --retry-failed
    assert cohort.run_shard(subjects_fixed, out, predict, models=model_2, retry_failed=True,
                            log=lambda line: None)["failed"] == 1
    assert calls == ["a", "b", "a", "b", "b", "b"]


def test_cohort_recomputes_rows_of_another_model_or_a_fixed_cine(cines: Path, tmp_path: Path) -> None:
    """Through the command: a rerun with another model recomputes every row; a fixed cine is retried
    by itself; a failure with an unchanged cine only with --retry-failed."""
    import shutil

    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(cines / "data" / "c0", data / "c0")
    shutil.copytree(cines / "data" / "c9", data / "c9")
    other = tmp_path / "other"
    save_untrained(load_config(TINY), other / "checkpoints", seed=1)

    def run(models: Path, *extra: str) -> list[str]:
        before = len(events(out)) if (out / cohort.STATE_DIR / "computed.log").exists() else 0
        assert run_main(predict.main, ["--cohort", "--cine", str(data), "--out", str(out), "--run-dir",
                                       str(models), *extra]) == 0
        return [sid for event, sid in events(out)[before:] if event == "start"]

    assert run(cines / "run") == ["c0", "c9"]
    assert run(cines / "run") == []
    assert run(other) == ["c0", "c9"]  # another model: the old numbers are not kept
    assert run(other, "--retry-failed") == ["c9"]
    shutil.copy(cines / "data" / "c1" / "cine.nii.gz", data / "c9" / "cine.nii.gz")  # the broken cine fixed
    assert run(other) == ["c9"]
    assert [r["flags"].startswith("failed") for r in table(out)] == [False, False]


def test_rows_not_yet_predicted_again_are_flagged_stale(cines: Path, tmp_path: Path, capsys) -> None:
    """After a retrain, the table a first worker writes keeps the other shard's old rows, flagged
    ``stale_model`` (and a row whose cine was replaced since, ``stale_cine``) until they are predicted again."""
    import shutil

    data, out = tmp_path / "data", tmp_path / "out"
    for sid in ("c0", "c1"):
        shutil.copytree(cines / "data" / sid, data / sid)
    retrained = tmp_path / "retrained"
    save_untrained(load_config(TINY), retrained / "checkpoints", seed=1)
    base = ["--cohort", "--cine", str(data), "--out", str(out)]

    def flags() -> dict[str, str]:
        return {r["subject"]: r["flags"] for r in table(out)}

    assert run_main(predict.main, [*base, "--run-dir", str(cines / "run")]) == 0
    assert not any("stale" in f for f in flags().values()) and "stale" not in capsys.readouterr().out
    assert run_main(predict.main, [*base, "--run-dir", str(retrained), "--shard", "0/2"]) == 0  # c0 only
    assert "1 of them made by other models or from an older cine" in capsys.readouterr().out
    assert "stale" not in flags()["c0"] and flags()["c1"].split(";")[0] == "stale_model"
    shutil.copy(cines / "data" / "c2" / "cine.nii.gz", data / "c0" / "cine.nii.gz")  # c0's cine replaced
    assert run_main(predict.main, [*base, "--run-dir", str(retrained), "--shard", "1/2"]) == 0  # c1 only
    assert flags()["c0"].split(";")[0] == "stale_cine" and "stale" not in flags()["c1"]
    assert "1 of them made by other models or from an older cine" in capsys.readouterr().out
    assert run_main(predict.main, [*base, "--run-dir", str(retrained)]) == 0
    assert not any("stale" in f for f in flags().values()) and "stale" not in capsys.readouterr().out


def test_the_table_reads_again_only_the_cines_changed_since_they_were_hashed(tmp_path: Path, monkeypatch) -> None:
    """Every worker rewrites the table when it ends: an unchanged cine is not read again (its files' sizes and
    times are those recorded with its hash), a replaced one is, and its row is flagged stale_cine."""
    out = tmp_path / "out"
    subjects = [("a", tmp_path / "a.nii.gz"), ("b", tmp_path / "b.nii.gz")]
    for sid, cine in subjects:
        cine.write_bytes(sid.encode())
    cohort.run_shard(subjects, out, lambda sid, cine: _fake_report(cine), models=["m"])
    hashed: list[Path] = []
    real_hash = cohort.input_hash
    monkeypatch.setattr(cohort, "input_hash", lambda cine: hashed.append(Path(cine)) or real_hash(cine))
    assert cohort.write_table(out, subjects, ["m"]) == (2, 0) and hashed == []
    subjects[1][1].write_bytes(b"another cine")
    assert cohort.write_table(out, subjects, ["m"]) == (2, 1) and hashed == [subjects[1][1]]
    assert [r["flags"].split(";")[0] for r in table(out)] == ["", "stale_cine"]


def test_a_subject_with_a_252_character_name_through_the_command(cines: Path, tmp_path: Path) -> None:
    import shutil

    data, out, name = tmp_path / "data", tmp_path / "out", "p" * 252
    shutil.copytree(cines / "data" / "c0", data / name)
    shutil.copytree(cines / "data" / "c1", data / "q1")
    assert run_main(predict.main, ["--cohort", "--cine", str(data), "--out", str(out), "--run-dir",
                                   str(cines / "run")]) == 0
    assert [(r["subject"], r["flags"].startswith("failed")) for r in table(out)] == [(name, False), ("q1", False)]
