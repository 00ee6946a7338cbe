"""The race's table, as printed text and as Markdown (what docs/PERFORMANCE.md shows)."""

from __future__ import annotations

from typing import Any

NAMES = {"bare": "bare loop (baseline)", "ours": "ours (mi_pipeline engine)", "lightning": "Lightning Trainer",
         "monai": "MONAI SupervisedTrainer"}
HEADER = ("tool", "step overhead (vs bare loop)", "checkpoint stall per epoch", "checkpoint size",
          "resume start-up (fresh)", "steps redone after kill -9", "bit-identical after kill -9",
          "requeue round trip (steps lost, bit-identical)")


def _yes_no(values: list[bool]) -> str:
    if not values:
        return "-"
    return "yes" if all(values) else ("no" if not any(values) else f"{sum(values)}/{len(values)} runs")


def _redone(values: list[int]) -> str:
    if not values:
        return "-"
    distinct = sorted(set(values))
    return str(distinct[0]) if len(distinct) == 1 else "/".join(str(v) for v in values)


def _requeue(results: dict[str, Any], tool: str) -> str:
    slurm = results.get("slurm") or {}
    if "skipped" in slurm:
        return "not run"
    entry = slurm.get(tool)
    if entry is None:
        return "-"
    if "unsupported" in entry:
        return f"n/a ({entry['unsupported']})"
    if "error" in entry:
        return f"failed: {entry['error']}"
    return (f"{entry['signal_to_training_s']:.1f} s ({entry['steps_lost']} lost, "
            f"{'yes' if entry['bit_identical'] else 'no'})")


def rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for tool, f in results["tools"].items():
        if tool == "bare":
            step = f"{f['step_ms']} ms"
            stall = "- (writes none)"
            size = "-"
        else:
            step = f"{f['step_ratio']:.3f}x ({f['step_ms']} ms; CPU time {f['step_ratio_cpu']:.3f}x)"
            stall = f"{f['checkpoint_stall_ms']} ms (CPU {f['checkpoint_stall_cpu_ms']} ms)" + (
                f"; + {f['background_write_ms']} ms per file written in the background"
                if f["background_write_ms"] is not None else "")
            size = f"{f['last_checkpoint_mb']} MB ({f['checkpoint_mb_per_epoch']} MB all files)"
        start = (f"{f['resume_start_s']:.2f} s ({f['fresh_start_s']:.2f} s)" if f["resume_start_s"] is not None
                 else f"- ({f['fresh_start_s']:.2f} s)")
        out.append((NAMES[tool], step, stall, size, start, _redone(f["steps_redone_after_kill"]),
                    _yes_no(f["bit_identical_after_kill"]), _requeue(results, tool) if tool != "bare" else "-"))
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    meta = results["meta"]
    lines += ["", (f"{meta['date_utc']}, `{meta['command']}`, {meta['repeats']} repeat(s), {meta['epochs']} epochs, "
                   f"kill -9 after step {results.get('kill_after')}; versions {meta['versions']}; "
                   f"load average {meta['load_avg_start']} -> {meta.get('load_avg_end')}; wall {meta.get('wall_s')} s.")]
    same = {t: f["weights_equal_bare_loop"] for t, f in results["tools"].items() if t != "bare"}
    lines.append("Final weights equal to the bare loop's (uninterrupted runs): "
                 + ", ".join(f"{t} {_yes_no(v)}" for t, v in same.items()) + ".")
    return "\n".join(lines) + "\n"


def render(results: dict[str, Any]) -> str:
    table = [HEADER, *rows(results)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    text = ["", *("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)]
    for tool, f in results["tools"].items():
        text.append(f"  {tool}: step ratios per repeat {f['step_ratios']}, stalls ms {f['checkpoint_stalls_ms']}, "
                    f"epoch end vs bare ms {f['extra_epoch_end_vs_bare_ms']} (CPU {f['extra_epoch_end_vs_bare_cpu_ms']}), "
                    f"resume start-ups s {f['resume_starts_s']}, threads {f['threads']}, "
                    f"files {f['checkpoint_files']}")
    return "\n".join(text)
