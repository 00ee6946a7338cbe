"""``python -m benchmarks.peers``: race our engine against Lightning and MONAI's trainer (issue 19).

Run from the repository root with the peers installed (``pip install -c constraints-cpu.txt -e '.[peers]'``):

    python -m benchmarks.peers                      # full: 3 repeats, ~10-15 min on 2 busy cores
    python -m benchmarks.peers --quick              # 1 repeat, tiny data, 2 epochs
    python -m benchmarks.peers --slurm              # also the preemption round trip on the live cluster
    python -m benchmarks.peers --json peers.json --markdown peers.md
    python -m benchmarks.peers --render peers.json   # the table of a saved run again

A tool whose package is missing is left out with a printed reason; so is the SLURM part when no
cluster answers. Exit status 0 when every run finished (whatever the figures say), 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.peers import race as race_mod
from benchmarks.peers.report import markdown, render

DEFAULT_CONFIG = race_mod.REPO / "configs" / "demo.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, tiny data, 2 epochs")
    parser.add_argument("--repeats", type=int, help="override the preset's repeats")
    parser.add_argument("--tools", default=",".join(race_mod.TOOLS[1:]),
                        help="comma-separated subset of ours,lightning,monai (the bare loop always runs)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--work-dir", type=Path, help="scratch folder, kept (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, help="write all figures and raw timestamps here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--slurm", action="store_true", help="also measure preemption + requeue on the live cluster")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only print (and --markdown) the table of a saved run")
    return parser.parse_args(argv)


def available_tools(requested: str) -> tuple[tuple[str, ...], dict[str, str]]:
    tools, skipped = ["bare"], {}
    for tool in [t.strip() for t in requested.split(",") if t.strip()]:
        if tool not in race_mod.TOOLS or tool == "bare":
            raise SystemExit(f"error: --tools: unknown tool {tool!r} (ours, lightning, monai)")
        module = race_mod.PEER_MODULES.get(tool)
        if module and importlib.util.find_spec(module) is None:
            skipped[tool] = f"{module} is not installed (pip install -e '.[peers]')"
            continue
        tools.append(tool)
    return tuple(tools), skipped


def meta(args: argparse.Namespace, preset: race_mod.Preset) -> dict[str, Any]:
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("monai", "lightning", "ignite"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"command": "python -m benchmarks.peers " + " ".join(sys.argv[1:]), "preset": preset.name,
            "overrides": list(preset.overrides), "epochs": preset.epochs, "repeats": preset.repeats,
            "versions": versions, "cpus": os.cpu_count(), "load_avg_start": [round(x, 2) for x in os.getloadavg()],
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        print(render(results))
        if args.markdown:
            args.markdown.write_text(markdown(results))
        return 0
    preset = race_mod.QUICK if args.quick else race_mod.FULL
    if args.repeats:
        preset = race_mod.Preset(preset.name, preset.overrides, preset.epochs, args.repeats)
    tools, skipped = available_tools(args.tools)
    for tool, why in skipped.items():
        print(f"skipping {tool}: {why}", file=sys.stderr)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="peers-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"meta": meta(args, preset), "skipped": skipped}
    started = time.time()
    status = 0
    try:
        race = race_mod.Race(preset, args.config.resolve(), work.resolve(), tools)
        raw = race_mod.run(race)
        results.update({"tools": race_mod.figures(raw, tools), "kill_after": raw["kill_after"], "raw": raw})
        if args.slurm:
            from benchmarks.peers import slurm

            results["slurm"] = slurm.measure(race, raw)
        else:
            results["slurm"] = {"skipped": "not requested (--slurm)"}
    except Exception as exc:  # noqa: BLE001 -- any failure: report what we have, then exit 1
        results["error"] = f"{type(exc).__name__}: {exc}"
        print(f"error: {results['error']}", file=sys.stderr)
        status = 1
    finally:
        results["meta"]["wall_s"] = round(time.time() - started, 1)
        results["meta"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if "tools" in results:
        print(render(results))
        if args.markdown:
            args.markdown.write_text(markdown(results))
    return status


if __name__ == "__main__":
    sys.exit(main())
