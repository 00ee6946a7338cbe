"""The race's table, as printed text and as Markdown (what docs/PERFORMANCE.md shows)."""

from __future__ import annotations

from typing import Any

NAMES = {"bare": "bare loop (baseline)", "ours": "ours (mi_pipeline engine)", "lightning": "Lightning Trainer",
         "monai": "MONAI SupervisedTrainer"}
HEADER = ("tool", "step overhead (vs bare loop)", "checkpoint stall per epoch (loop blocked)", "checkpoint size",
          "resume start-up: process start -> first step", "steps redone after kill -9", "bit-identical after kill -9",
          "host syncs per step", "requeue round trip: signal -> training again")


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
    total, pending, running = entry["signal_to_training_s"], entry["pending_after_s"], entry["running_again_after_s"]
    parts = ""
    if pending is not None and running is not None:
        parts = (f" = {pending:.1f} s to exit + {running - pending:.1f} s SLURM hold + "
                 f"{total - running:.1f} s start-up")
    return (f"{total:.1f} s{parts}; {_redone(entry['steps_lost'])} step(s) lost; "
            f"bit-identical {_yes_no(entry['bit_identical'])}")


def _syncs(f: dict[str, Any], tool: str) -> str:
    total, own = f.get("syncs_per_step") or [], f.get("own_syncs_per_step") or []
    if not total:
        return "-"
    if tool == "bare":
        return f"{_redone([round(x) for x in total])} (the task's own)"
    return f"{_redone([round(x) for x in own])} own (+ the task's)"


def rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for tool, f in results["tools"].items():
        if tool == "bare":
            step = f"{f['step_ms']} ms per step"
            stall = "- (writes none)"
            size = "-"
        else:
            cpu = f.get("step_ratios_cpu") or []
            spread = f"; repeats {min(cpu):.2f}-{max(cpu):.2f}" if len(cpu) > 1 else ""
            step = f"{f['step_ratio_cpu']:.3f}x CPU, {f['step_ratio']:.3f}x wall{spread}"
            stall = f"{f['checkpoint_stall_ms']} ms ({f['checkpoint_stall_cpu_ms']} ms CPU)"
            if f["background_write_ms"] is not None:
                stall += f", then {f['background_write_ms']} ms per file in the background"
            stall += f"; epoch end vs bare loop +{f['extra_epoch_end_vs_bare_cpu_ms']} ms CPU"
            size = f"{f['last_checkpoint_mb']} MB ({f['checkpoint_mb_per_epoch']} MB all files)"
        fresh = f"{f['fresh_start_s']:.1f} s, {f.get('fresh_start_cpu_s') or 0:.2f} s CPU"
        start = (f"{f['resume_start_s']:.1f} s, {f.get('resume_start_cpu_s') or 0:.2f} s CPU (fresh {fresh})"
                 if f["resume_start_s"] is not None else f"- (fresh {fresh})")
        out.append((NAMES[tool], step, stall, size, start, _redone(f["steps_redone_after_kill"]),
                    _yes_no(f["bit_identical_after_kill"]), _syncs(f, tool),
                    _requeue(results, tool) if tool != "bare" else "-"))
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
        text.append(f"  {tool}: step ratios per repeat {f['step_ratios']} (CPU {f.get('step_ratios_cpu')}), "
                    f"stalls ms {f['checkpoint_stalls_ms']}, epoch end vs bare ms {f['extra_epoch_end_vs_bare_ms']} "
                    f"(CPU {f.get('extra_epoch_ends_vs_bare_cpu_ms')}), resume start-ups s {f['resume_starts_s']} "
                    f"(CPU {f.get('resume_starts_cpu_s')}), threads {f['threads']}, files {f['checkpoint_files']}")
    return "\n".join(text)
