"""Item 5a: what running the pipeline through ``submit`` costs beyond the stages' own work.

The demo pipeline runs as users run it (``submit --mode fresh --yes --executor local``); its wall time
is compared with the sum of its four stages' own times from the progress record (``started`` ->
``finished``, written by each stage process once it is up). The difference is process start-up
(Python + torch imports), planning and the progress-record updates. The record's timestamps have
one-second resolution, so each stage's time is known to about +-1 s. This run also produces the
trained run directory every later measurement reads.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from benchmarks.perf.timing import clock
from benchmarks.perf.workspace import Bench, python_module, run_child
from mi_pipeline.engine.runlog import StageLog
from mi_pipeline.graph import MODEL_STAGES, STAGES
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.progress import ProgressFile

PIPELINE_TIMEOUT_S = 1800.0


def parse_time(text: str | None) -> dt.datetime | None:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z") if text else None


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Each stage's own time (started -> finished) from the progress record."""
    seconds = {}
    for stage, record in ProgressFile(run_dir).read().stages.items():
        started, finished = parse_time(record.started), parse_time(record.finished)
        if started is None or finished is None or record.status != "done":
            raise RuntimeError(f"{run_dir}: stage {stage} has no finished run in the progress record "
                               f"(status {record.status})")
        seconds[stage] = (finished - started).total_seconds()
    return seconds


def epoch_seconds(run_dir: Path) -> dict[str, float]:
    """Sum of the epochs' own seconds (training + validation, from metrics.jsonl) per trained stage."""
    layout = RunLayout(run_dir)
    return {stage: round(sum(r.get("seconds") or 0.0 for r in StageLog(layout.log_dir(stage), stage,
                                                                        files=False).read_metrics()), 2)
            for stage in MODEL_STAGES}


def measure(bench: Bench) -> dict[str, Any]:
    run_dir = bench.work / "pipeline"
    args = ("--mode", "fresh", "--yes", "--executor", "local", "--run-dir", str(run_dir),
            *bench.config_args(*bench.preset.pipeline_overrides))
    start = clock()
    run_child(python_module("mi_pipeline.submit", *args), PIPELINE_TIMEOUT_S, "the local pipeline")
    wall = clock() - start
    bench.run_dir = run_dir
    stages = stage_seconds(run_dir)
    total = sum(stages[s] for s in STAGES)
    return {
        "orchestration_overhead_ratio": round(wall / total, 4),
        "orchestration": {
            "command": "python -m mi_pipeline.submit " + " ".join(args),
            "wall_s": round(wall, 2), "stages_sum_s": total, "stage_s": stages,
            "epochs_s": epoch_seconds(run_dir), "timestamp_resolution_s": 1.0,
        },
    }
