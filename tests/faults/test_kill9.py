"""kill -9 at uniformly random instants of a whole stage run, then resume (toy task, real engine).

The run is the toy task through the real engine (engine_runner.py: real trainer, real StopFlag, real
progress record) so the default suite can afford N >= 20 trials in CI; each run is a real process
forked from zygote.py and killed with a real SIGKILL. The test-only slow-write hook makes every atomic
write (checkpoints, progress record, metrics rewrite) take longer, so a good share of the kills land
inside a write. Some trials kill the resumed run too (1-3 kills per trial).

Default: 24 trials. Soak (``--soak`` / MI_PIPELINE_SOAK=1): 240. MI_PIPELINE_FAULT_TRIALS=N overrides.
Per trial: every kill -> all checkpoints on disk still load; after the final resume -> exit 0,
last.pth and best_model.pth bit-equal to the uninterrupted run, no temp file anywhere, progress
record parses and says done at the last epoch, metrics.jsonl holds each epoch exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.faults import harness

PARALLEL = 2  # trials in flight at once (each is mostly sleeping: 2 CPU cores are plenty)


def _one_trial(zygote: harness.Zygote, run_dir: Path, rng: random.Random, ref: harness.Reference,
               tally: harness.Tally) -> None:
    label = run_dir.name
    for _ in range(rng.choice((1, 1, 2, 3))):
        pid = zygote.start(run_dir, slow_write_s=harness.SLOW_WRITE_S)
        started = time.monotonic()
        time.sleep(max(0.0, rng.uniform(0.0, ref.seconds) - (time.monotonic() - started)))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = zygote.wait()
        tally.faults_injected += 1
        if status != -signal.SIGKILL:
            tally.landed_after_exit += 1
            if status != 0:
                tally.problems.append(f"{label}: run exited {status} before the kill: "
                                      f"{run_dir.with_suffix('.out').read_text()[-2000:]}")
                return
        if harness.temp_files(run_dir):
            tally.landed_in_write += 1
        bad = harness.unreadable_checkpoints(run_dir)  # a kill must never leave a torn checkpoint
        tally.unreadable_checkpoints += len(bad)
        tally.problems += [f"{label}: after kill: {b}" for b in bad]
    status = zygote.run(run_dir)[0]  # resume to the end, no hook
    if status != 0:
        tally.problems.append(f"{label}: resume exited {status}: {Path(str(run_dir) + '.out').read_text()[-2000:]}")
        return
    tally.completed += 1
    harness.check_finished_run(run_dir, ref, tally, label)


def test_kill9_at_random_instants_toy_engine_resumes_bit_exact(tmp_path: Path, reference: harness.Reference,
                                                               soak: bool) -> None:
    trials = harness.trial_count(soak, default=24, soak_n=240, env_name="MI_PIPELINE_FAULT_TRIALS")
    seed = int(os.environ.get("MI_PIPELINE_FAULT_SEED", "0")) or random.randrange(1, 2**31)
    tally = harness.Tally(trials=trials)
    zygotes = [harness.Zygote() for _ in range(PARALLEL)]
    started = time.monotonic()
    try:
        def lane(index: int) -> None:
            for trial in range(index, trials, PARALLEL):
                rng = random.Random(seed * 100_003 + trial)
                _one_trial(zygotes[index], tmp_path / f"trial{trial:04d}", rng, reference, tally)

        with ThreadPoolExecutor(PARALLEL) as pool:
            for future in [pool.submit(lane, i) for i in range(PARALLEL)]:
                future.result()
    finally:
        for zygote in zygotes:
            zygote.close()
    print(f"\n{tally.line()} seed={seed} seconds={time.monotonic() - started:.0f}")
    assert not tally.problems, f"seed {seed} (MI_PIPELINE_FAULT_SEED to replay):\n" + "\n".join(tally.problems[:20])
    assert tally.completed == tally.identical_weights == trials
    assert tally.landed_in_write > 0, "no kill landed inside a write: the slow-write hook is not reached"
    assert tally.unreadable_checkpoints == tally.temp_files_left == tally.progress_unparsable == 0


def test_data_step_cleans_temp_files_of_a_killed_run(tmp_path: Path, prepared_run: Path) -> None:
    """What a kill -9 inside step 1's manifest/splits writes leaves behind is removed by the next step 1."""
    import shutil

    from tests.faults.conftest import TINY, cli

    run = tmp_path / "run"
    shutil.copytree(prepared_run, run, symlinks=True)
    planted = [run / "data/cache/.manifest.json.k1ll3d.tmp", run / "data/splits/.train.txt.k1ll3d.tmp",
               run / "data/.cache.tmp-k1ll3d/data/cache/x.npz"]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    done = cli("train", "--stage", "data", "--config", TINY, "--run-dir", str(run))
    assert done.returncode == 0, done.stderr[-2000:]
    assert not harness.temp_files(run), harness.temp_files(run)


TOY = Path(__file__).resolve().parents[1] / "engine" / "toy_task.py"
EVERY_STEPS = 3  # the mid-epoch cadence under test (performance.checkpoint_every_steps)


def _toy(run_dir: Path, *args: str, expect: int = 0) -> str:
    import subprocess
    import sys

    from tests.helpers import env

    proc = subprocess.run([sys.executable, str(TOY), str(run_dir), "3", "--sleep", "0.01", *args], env=env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc.stderr


def test_kill9_mid_epoch_redoes_at_most_the_checkpoint_interval(tmp_path: Path) -> None:
    """A real SIGKILL in the middle of epoch 2: with a mid-epoch last.pth every 3 steps, the resumed run
    redoes at most 3 steps (not the 6 of the unfinished epoch) and ends bit-identical to an uninterrupted
    run, which is itself bit-identical to one that never saves mid-epoch (saving changes nothing)."""
    cadence = ("--set", f"performance.checkpoint_every_steps={EVERY_STEPS}", "--set", "performance.checkpoint_every_s=0")
    _toy(tmp_path / "plain", "--set", "performance.checkpoint_every_s=0")
    _toy(tmp_path / "ref", *cadence)
    run = tmp_path / "run"
    # stop check 15 = epoch 2, batch 6 (8 batches per epoch, one check per batch and one per epoch end): 14 steps trained
    _toy(run, *cadence, "--kill-after", "15", expect=-signal.SIGKILL)
    saved = harness.ckpt.load_checkpoint(harness.ckpt_dir(run) / "last.pth")["state"]
    trained = 14
    assert (saved["epoch"], saved["batch"]) == (1, 4), saved  # the save at step 12, inside epoch 2
    redone = trained - saved["step"]
    assert 0 <= redone <= EVERY_STEPS, f"{redone} steps redone with a checkpoint every {EVERY_STEPS}"
    log = _toy(run, *cadence)
    assert "resuming from last.pth at epoch 2, batch 5" in log
    for name in ("last.pth", "best_model.pth"):
        final = harness.weights(harness.ckpt_dir(run) / name)
        assert harness.same_weights(final, harness.weights(harness.ckpt_dir(tmp_path / "ref") / name)), name
        assert harness.same_weights(final, harness.weights(harness.ckpt_dir(tmp_path / "plain") / name)), name
    assert not harness.temp_files(run)
