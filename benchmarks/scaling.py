"""Cohort scaling: data-step time and every stage's peak RSS for 100, 500, 2,000 phantom subjects.

``python -m benchmarks.scaling --subjects 100 500 2000 --work-dir W --json s.json --markdown s.md``

Why this shape: the question is how cost grows with the *number of subjects*, not with image size,
so every run uses the same small phantom (64-pixel matrix, 3 slices, 8 frames -> 32-pixel crop,
4 frames) and one epoch per trained stage; only the cohort size changes. Each stage is its own
process (``python -m mi_pipeline.train --stage S``, what a job runs), and its peak resident set is
the kernel's ``ru_maxrss`` for exactly that child (``os.wait4``), so one stage's peak cannot hide
another's. The phantom is generated once per size into the work folder (its time is reported apart:
it is not the pipeline's cost) and reused by later invocations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mi_pipeline.graph import STAGES

# One small cohort member; the crop holds the heart at 2.5 mm (80 mm field of view).
CONFIG = """\
seed: 0
threads: {threads}
device: cpu
data:
  format: phantom
  root: {root}
  phantom: {{subjects: {subjects}, seed: 3, size: 64, slices: 3, frames: 8}}
  spacing_mm: 2.5
  crop: 32
  frames: 4
  val_fraction: 0.1
  test_fraction: 0.1
{data_extra}motion: {{epochs: 1, batch_size: 8, channels: [8, 8, 8, 8]}}
registration: {{epochs: 1, batch_size: 8, channels: 4}}
segmentation: {{epochs: 1, batch_size: 8, channels: [4, 8, 16]}}
"""


def run_measured(argv: list[str], log_path: Path) -> dict[str, Any]:
    """Run ``argv`` as a child; its wall seconds, CPU seconds, peak RSS (MB) and exit status."""
    start = time.monotonic()
    with open(log_path, "w") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(time.monotonic() - start, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "rc": child.returncode}


def ensure_phantom(work: Path, subjects: int) -> dict[str, Any]:
    """The phantom for ``subjects`` in ``work`` (generated once; later runs reuse it)."""
    root = work / f"phantom_{subjects}"
    marker = root / ".phantom.json"
    if marker.exists():
        return {"root": root, "generated_s": None}
    argv = [sys.executable, "-m", "mi_pipeline.phantom", "--out", str(root), "--subjects", str(subjects),
            "--size", "64", "--slices", "3", "--frames", "8", "--seed", "3"]
    result = run_measured(argv, work / f"phantom_{subjects}.log")
    if result["rc"] != 0:
        raise RuntimeError(f"phantom generation failed; see {work / f'phantom_{subjects}.log'}")
    return {"root": root, "generated_s": result["wall_s"]}


def measure_cohort(work: Path, subjects: int, *, threads: int, data_extra: str, label: str,
                   stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """Run the four stages on a fresh run folder for ``subjects`` phantom subjects."""
    phantom = ensure_phantom(work, subjects)
    run_dir = work / f"run_{label}_{subjects}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(CONFIG.format(threads=threads, root=phantom["root"], subjects=subjects,
                                      data_extra=data_extra))
    row: dict[str, Any] = {"subjects": subjects, "label": label, "phantom_s": phantom["generated_s"], "stages": {}}
    for stage in stages:
        argv = [sys.executable, "-m", "mi_pipeline.train", "--stage", stage, "--config", str(cfg_path),
                "--run-dir", str(run_dir)]
        result = run_measured(argv, run_dir / f"{stage}.out")
        row["stages"][stage] = result
        print(f"[{label} {subjects}] {stage}: {result}", flush=True)
        if result["rc"] != 0:
            row["failed"] = f"{stage} exited {result['rc']}; see {run_dir / (stage + '.out')}"
            break
    row["cache_mb"] = round(sum(p.stat().st_size for p in (run_dir / "data").rglob("*") if p.is_file()) / 2**20, 1)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| code | subjects | data step s | data CPU s | " + " | ".join(f"{s} peak RSS MB" for s in STAGES)
             + " | " + " | ".join(f"{s} s" for s in STAGES[1:]) + " | data/ on disk MB |",
             "|" + "---|" * (4 + 2 * len(STAGES)) ]
    for r in rows:
        st = r["stages"]
        rss = [str(st[s]["peak_rss_mb"]) if s in st else "—" for s in STAGES]
        secs = [str(st[s]["wall_s"]) if s in st else "—" for s in STAGES[1:]]
        data = st.get("data", {})
        lines.append(f"| {r['label']} | {r['subjects']} | {data.get('wall_s', '—')} | {data.get('cpu_s', '—')} | "
                     + " | ".join(rss) + " | " + " | ".join(secs) + f" | {r['cache_mb']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, nargs="+", default=[100, 500, 2000])
    p.add_argument("--work-dir", type=Path, required=True, help="scratch folder (phantoms are kept for reuse)")
    p.add_argument("--label", default="new", help="name of the code measured (e.g. before / after)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set-data", action="append", default=[], metavar="KEY: VALUE",
                   help="extra line in the data section, e.g. 'workers: 2'")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                   help="stages to run, in order (default all; e.g. only data to compare data.workers)")
    p.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file")
    p.add_argument("--markdown", type=Path, default=None)
    args = p.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    data_extra = "".join(f"  {line}\n" for line in args.set_data)
    rows = [measure_cohort(args.work_dir, n, threads=args.threads, data_extra=data_extra, label=args.label,
                           stages=tuple(args.stages))
            for n in args.subjects]
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.exists() else []
        args.json.write_text(json.dumps(old + rows, indent=1) + "\n")
        rows = old + rows
    table = markdown(rows)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 1 if any("failed" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
