"""Fork-server for fault trials: imports torch and the engine once, then forks one real process per run.

Why: importing torch costs ~4 s on a CI core and the toy run ~1 s, so a fresh interpreter per trial
would spend 80% of the suite importing. Each run is still its own process (fork, then the real engine),
and the test kills it with real signals by pid. The zygote itself runs no torch op before forking.

Protocol (one JSON object per line): stdin ``{"run_dir", "epochs", "sleep_s", "slow_write_s", "log"}``
-> stdout ``{"pid": P}`` right after the fork, then ``{"pid": P, "status": S}`` when it ended
(S = exit code, or -signal number when a signal killed it). One run at a time per zygote.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_runner  # noqa: E402  (imports torch and the engine before any fork)


def child(request: dict) -> int:
    log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    if request.get("slow_write_s"):
        os.environ["MI_PIPELINE_TEST_SLOW_WRITE_S"] = str(request["slow_write_s"])
    else:
        os.environ.pop("MI_PIPELINE_TEST_SLOW_WRITE_S", None)
    return engine_runner.run(Path(request["run_dir"]), int(request["epochs"]), float(request.get("sleep_s", 0.0)))


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        # Stop signals stay blocked until the child has installed its handler: a signal sent right
        # after the fork is then handled gracefully instead of killing a half-started process.
        signal.pthread_sigmask(signal.SIG_BLOCK, engine_runner.STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child(request)
            except BaseException:  # noqa: BLE001 - report and exit, never return into the server loop
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, engine_runner.STOP_SIGNALS)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"pid": pid, "status": code}), flush=True)


if __name__ == "__main__":
    main()
