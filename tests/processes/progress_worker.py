"""Worker processes for the progress-record concurrency tests (each a fresh interpreter).

usage: progress_worker.py bump RUN_DIR COUNT ACK_FILE   read-modify-write COUNT times; one ack line after each
       progress_worker.py read RUN_DIR STOP_FILE        read (raw, as `cat` does, and locked) until STOP_FILE exists
       progress_worker.py hold RUN_DIR MARKER           take the lock, create MARKER, sleep forever
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from mi_pipeline.orchestration.progress import FILENAME, STATES, ProgressFile


def bump(run_dir: Path, count: int, ack: Path) -> None:
    record = ProgressFile(run_dir)
    with open(ack, "a", encoding="utf-8") as acks:
        for _ in range(count):
            with record.update() as progress:
                progress.stages["motion"].attempts += 1
                progress.stages["registration"].pid = os.getpid()
            acks.write("1\n")
            acks.flush()


def check_raw(text: str) -> None:
    first, _, rest = text.partition("\n")
    assert first in STATES, f"first line {first[:40]!r}"
    body = "\n".join(line for line in rest.splitlines() if not line.startswith("#"))
    detail = json.loads(body)
    assert detail["state"] == first


def read(run_dir: Path, stop: Path) -> None:
    record = ProgressFile(run_dir)
    raw = locked = 0
    while not stop.exists():
        try:
            text = (run_dir / FILENAME).read_text(encoding="utf-8")
        except FileNotFoundError:
            text = None
        if text is not None:
            check_raw(text)
            raw += 1
        progress = record.read()
        assert not progress.notes, progress.notes
        locked += 1
    print(json.dumps({"raw_reads": raw, "locked_reads": locked}))


def hold(run_dir: Path, marker: Path) -> None:
    with ProgressFile(run_dir).locked():
        marker.write_text(str(os.getpid()))
        time.sleep(3600)


if __name__ == "__main__":
    mode, run = sys.argv[1], Path(sys.argv[2])
    if mode == "bump":
        bump(run, int(sys.argv[3]), Path(sys.argv[4]))
    elif mode == "read":
        read(run, Path(sys.argv[3]))
    else:
        hold(run, Path(sys.argv[3]))
