"""SIGTERM / SIGUSR2 at uniformly random instants -> graceful stop (exit 75, position saved), resume,
same final weights (toy task through the real engine and the real StopFlag of mi_pipeline.train).

Stop signals are blocked from the fork until the run has installed its handler (as a job's handler is
in place before training starts), so every signal must end in a graceful stop or, when it lands
after the last batch, a normal finish: never a killed process. Default 12 trials, soak 120
(MI_PIPELINE_SIGNAL_TRIALS=N overrides).
"""

from __future__ import annotations

import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from tests.faults import harness

PARALLEL = 2


def _one_trial(zygote: harness.Zygote, run_dir: Path, rng: random.Random, ref: harness.Reference,
               tally: harness.Tally) -> None:
    label = run_dir.name
    sig = rng.choice((signal.SIGTERM, signal.SIGUSR2))
    pid = zygote.start(run_dir, slow_write_s=harness.SLOW_WRITE_S)
    time.sleep(rng.uniform(0.0, ref.seconds))
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    status = zygote.wait()
    tally.faults_injected += 1
    out = Path(str(run_dir) + ".out").read_text()
    if status == 75:
        tally.graceful += 1
        if "stop requested" not in out:
            tally.problems.append(f"{label}: exit 75 without 'stop requested' in the log")
        saved = torch.load(harness.ckpt_dir(run_dir) / "last.pth", weights_only=True)["state"]
        tally.mid_epoch += int(saved["batch"] > 0)
    elif status == 0:
        tally.landed_after_exit += 1
    else:
        tally.problems.append(f"{label}: {sig.name} gave exit status {status} (expected 75 or 0): {out[-1500:]}")
        return
    bad = harness.unreadable_checkpoints(run_dir)
    tally.unreadable_checkpoints += len(bad)
    tally.problems += [f"{label}: after {sig.name}: {b}" for b in bad]
    status = zygote.run(run_dir)[0]
    if status != 0:
        tally.problems.append(f"{label}: resume exited {status}")
        return
    tally.completed += 1
    harness.check_finished_run(run_dir, ref, tally, label)


def test_sigterm_sigusr2_at_random_instants_toy_engine_stop_gracefully(tmp_path: Path, reference: harness.Reference,
                                                                       soak: bool) -> None:
    trials = harness.trial_count(soak, default=12, soak_n=120, env_name="MI_PIPELINE_SIGNAL_TRIALS")
    seed = int(os.environ.get("MI_PIPELINE_FAULT_SEED", "0")) or random.randrange(1, 2**31)
    tally = harness.Tally(trials=trials)
    zygotes = [harness.Zygote() for _ in range(PARALLEL)]
    try:
        def lane(index: int) -> None:
            for trial in range(index, trials, PARALLEL):
                _one_trial(zygotes[index], tmp_path / f"trial{trial:04d}", random.Random(seed * 7919 + trial),
                           reference, tally)

        with ThreadPoolExecutor(PARALLEL) as pool:
            for future in [pool.submit(lane, i) for i in range(PARALLEL)]:
                future.result()
    finally:
        for zygote in zygotes:
            zygote.close()
    print(f"\n{tally.line()} seed={seed}")
    assert not tally.problems, f"seed {seed}:\n" + "\n".join(tally.problems[:20])
    assert tally.completed == tally.identical_weights == trials
    assert tally.graceful > 0
