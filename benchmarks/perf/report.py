"""Targets beside results: the table the benchmark prints and the ``targets`` list of its JSON.

A missed target is a finding, not an error: it is marked ``MISS`` and the benchmark still exits 0.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OPS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Target:
    key: str
    op: str
    threshold: float
    percent: bool = False  # a share: shown as %

    def fmt(self, value: float) -> str:
        return f"{100 * value:.2f}%" if self.percent else f"{value:.3f}x"

    def rows(self, results: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per stage (per-stage figures) or one row; nothing when the figure is absent."""
        value = results.get(self.key)
        items = value.items() if isinstance(value, dict) else [(None, value)] if value is not None else []
        rows = []
        for stage, v in items:
            met = isinstance(v, (int, float)) and math.isfinite(v) and OPS[self.op](v, self.threshold)
            rows.append({"key": self.key, "stage": stage, "value": v, "op": self.op, "target": self.threshold,
                         "met": bool(met)})
        return rows


TARGETS = (
    Target("engine_overhead_ratio", "<=", 1.05),
    Target("checkpoint_share", "<=", 0.02, percent=True),  # on the demo's own epochs (segmentation: 0.3 s)
    Target("checkpoint_share_1s_epoch", "<=", 0.02, percent=True),  # on epochs of >= 1 s: the yardstick
    Target("atomic_vs_plain_ratio", "<=", 1.2),
    Target("cache_speedup", ">=", 10.0),
    Target("resume_latency_ratio", "<=", 1.2),
    Target("orchestration_overhead_ratio", "<=", 1.10),
)


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for target in TARGETS for row in target.rows(results)]


def _line(name: str, value: str, target: str = "", mark: str = "") -> str:
    return f"  {name:<42} {value:>12}  {target:<10} {mark}"


def render(results: dict[str, Any]) -> str:
    """The printed table: targets first, then the figures without a target."""
    by_key = {t.key: t for t in TARGETS}
    lines = ["", "targets (every figure is a ratio of two timings measured alternately in this run)",
             _line("measurement", "value", "target", "")]
    for row in results.get("targets", []):
        target = by_key[row["key"]]
        name = row["key"] + (f"[{row['stage']}]" if row["stage"] else "")
        lines.append(_line(name, target.fmt(row["value"]), f"{row['op']} {target.fmt(row['target'])}",
                           "pass" if row["met"] else "MISS"))
    lines += ["", "other figures"]
    lines += _other_lines(results)
    if results.get("errors"):
        lines += ["", "errors"] + [f"  {k}: {v}" for k, v in results["errors"].items()]
    return "\n".join(lines)


def _other_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for stage, d in results.get("engine", {}).items():
        lines.append(_line(f"step ms {stage} (engine / manual)", f"{d['step_ms_engine']} / {d['step_ms_manual']}",
                           f"cpu-time ratio {d['ratio_cpu_time']:.3f}x"))
    for stage, d in results.get("checkpoint", {}).items():
        if isinstance(d, dict):
            lines.append(_line(f"checkpoint ms {stage} (loop blocked / write)", f"{d['stall_ms']} / {d['write_ms']}",
                               f"write vs plain {d['write_vs_plain']['ratio']:.2f}x"))
    c = results.get("cache")
    if c:
        lines.append(_line("cache / NIfTI size on disk (MB)", f"{c['cache_size_mb']} / {c['nifti_size_mb']}"))
        heap = f"{c['peak_heap_mb_cache']} / {c['peak_heap_mb_nifti']}"
        lines.append(_line("peak heap, cache / NIfTI epoch (MB)", heap))
    if "resume_latency_ratio_cpu_time" in results:
        lines.append(_line("resume latency, child CPU-time ratio", f"{results['resume_latency_ratio_cpu_time']:.3f}x"))
    o = results.get("orchestration")
    if o:
        lines.append(_line("pipeline wall / stages sum (s)", f"{o['wall_s']} / {o['stages_sum_s']}"))
    s = results.get("slurm", {})
    if "skipped" in s:
        lines.append(_line("slurm", "skipped", s["skipped"][:60]))
    elif s:
        lines.append(_line("slurm submit -> start (s)", f"{s['submit_to_start_s']:.0f}"))
        lines.append(_line("slurm upstream end -> dependant start (s)", f"{s['dependency_release_median_s']:.0f}"))
        lines.append(_line("slurm wall / critical path", f"{s['wall_vs_critical_path']}"))
    if "skipped" in results.get("ddp", {}):
        lines.append(_line("ddp", "skipped", results["ddp"]["skipped"][:60]))
    if "ddp_efficiency" in results:
        lines.append(_line("DDP 2-rank efficiency (motion, gloo)", f"{results['ddp_efficiency']:.3f}",
                           f"vs threads x{results['ddp']['speedup_vs_threads_on_same_cores']:.2f}"))
    for row in results.get("scaling", {}).get("table", []):
        lines.append(_line(f"motion crop {row['crop']} batch {row['batch']}: ms/step",
                           f"{row['step_ms']}", f"x{row['per_sample_vs_base']}/sample"))
    for stage, p in results.get("profile", {}).items():
        top = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in p["top_ops"][:3])
        lines.append(f"  profile {stage}: {top}")
    g = results.get("gpu_switches", {})
    if "skipped" in g:
        lines.append(_line("gpu_switches", "skipped", g["skipped"][:60]))
    for stage, d in g.items():
        if isinstance(d, dict) and "vs_all_off" in d:
            shown = " ".join(f"{k}={v:.2f}" for k, v in d["vs_all_off"].items())
            lines.append(f"  gpu {stage} (samples/s vs all off): {shown}")
    return lines


# --- Markdown (docs/PERFORMANCE.md is pasted from this) ------------------------------------------


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return lines + [""]


def markdown(results: dict[str, Any]) -> str:
    """The run's figures as Markdown tables: targets, then the detail behind each."""
    by_key = {t.key: t for t in TARGETS}
    out = ["### Targets", ""]
    out += _md_table(["figure", "value", "target", ""], [
        [f"`{r['key']}`" + (f" {r['stage']}" if r["stage"] else ""), by_key[r["key"]].fmt(r["value"]),
         f"{r['op']} {by_key[r['key']].fmt(r['target'])}", "pass" if r["met"] else "**miss**"]
        for r in results.get("targets", [])])
    out += _md_engine(results) + _md_checkpoint(results) + _md_rest(results)
    return "\n".join(out)


def _md_engine(results: dict[str, Any]) -> list[str]:
    engine = results.get("engine", {})
    if not engine:
        return []
    return ["### Engine vs hand-written loop (ms per step, medians)", ""] + _md_table(
        ["stage", "batch", "manual", "engine", "ratio", "ratio (CPU time)", "step after validation", "validation",
         "epoch end (checkpoints)"],
        [[s, d["batch_size"], d["step_ms_manual"], d["step_ms_engine"], d["pairs"]["ratio"], d["ratio_cpu_time"],
          d.get("in_engine_step_after_validation_ms"), d["in_engine_validation_ms"], d["in_engine_epoch_end_ms"]]
         for s, d in engine.items()])


def _md_checkpoint(results: dict[str, Any]) -> list[str]:
    ck = results.get("checkpoint", {})
    stages = {s: d for s, d in ck.items() if isinstance(d, dict)}
    if not stages:
        return []
    return [f"### Checkpoints, last + best ({ck.get('filesystem')}; ms, medians)", ""] + _md_table(
        ["stage", "last.pth MB", "plain torch.save", "engine save (loop blocked)", "ratio", "atomic write",
         "ratio", "extra epoch time", "epoch", "share", "share of a >= 1 s epoch"],
        [[s, d["last_mb"], d["plain_ms"], d["stall_ms"], d["stall_vs_plain"]["ratio"], d["write_ms"],
          d["write_vs_plain"]["ratio"], d["extra_epoch_ms"], d["epoch_ms"],
          f"{100 * d['share']:.2f}%" if d["share"] is not None else "-",
          f"{100 * d['share_1s_epoch']:.2f}%" if d.get("share_1s_epoch") is not None else "-"]
         for s, d in stages.items()])


def _md_sentences(results: dict[str, Any]) -> list[str]:
    out = []
    c, r, o = results.get("cache"), results.get("resume"), results.get("orchestration")
    if c:
        out.append(f"**Cache**: one epoch of {c['subjects']} training subjects takes {c['epoch_ms_cache']} ms from "
                   f"the cache vs {c['epoch_ms_nifti']} ms decoding and preprocessing the NIfTI files; the cache is "
                   f"{c['cache_size_mb']} MB on disk (NIfTI {c['nifti_size_mb']} MB); peak heap "
                   f"{c['peak_heap_mb_cache']} MB vs {c['peak_heap_mb_nifti']} MB.")
    if r:
        p = r["pairs"]
        out.append(f"**Resume**: start -> training loop {p['subject_median_s']} s resuming vs "
                   f"{p['baseline_median_s']} s fresh (children's CPU-time ratio "
                   f"{results.get('resume_latency_ratio_cpu_time')}).")
    if o:
        out.append(f"**Local pipeline**: {o['wall_s']} s wall; the stages' own times {o['stage_s']} (sum "
                   f"{o['stages_sum_s']} s); the epochs' own seconds {o['epochs_s']}.")
    out.append(_section_sentence("SLURM", results.get("slurm", {}), lambda s: (
        f"**SLURM** (sacct, 1 s resolution): submit -> start {s['submit_to_start_s']} s; upstream end -> "
        f"dependant start {s['dependency_release_s']}; wall {s['wall_s']} s vs critical path "
        f"{s['critical_path_s']} s.")))
    out.append(_section_sentence("DDP", results.get("ddp", {}), lambda d: (
        f"**DDP** (motion, gloo, same global batch): step ms {d['step_ms']}; 2 ranks x 1 thread vs 1 rank "
        f"x 1 thread: efficiency {d['efficiency']} (speedup {d['speedup_vs_1thread']}); vs 1 rank using "
        f"every core as threads: speedup {d['speedup_vs_threads_on_same_cores']}.")))
    return [line for sentence in out if sentence for line in (sentence, "")]


def _section_sentence(title: str, section: dict[str, Any], describe: Callable[[dict[str, Any]], str]) -> str:
    """A section that may have been skipped: its reason, or ``describe(section)``, or "" when absent."""
    if "skipped" in section:
        return f"**{title}**: skipped ({section['skipped']})."
    return describe(section) if section else ""


def _md_rest(results: dict[str, Any]) -> list[str]:
    out = _md_sentences(results)
    table = results.get("scaling", {}).get("table", [])
    if table:
        out += ["### Motion step vs crop and batch", ""] + _md_table(
            ["crop", "batch", "ms/step", "samples/s", "per sample vs base", "per pixel vs base"],
            [[t["crop"], t["batch"], t["step_ms"], t["samples_per_s"], t["per_sample_vs_base"],
              t["per_pixel_vs_base"]] for t in table])
    if results.get("profile"):
        out += ["### Where a training step goes (torch.profiler)", ""]
    for stage, p in results.get("profile", {}).items():
        phases = ", ".join(f"{k} {100 * v:.0f}%" for k, v in p["phase_share"].items())
        ops = ", ".join(f"`{o['op']}` {100 * o['share']:.0f}%" for o in p["top_ops"])
        out.append(f"- **{stage}** ({p['step_ms']} ms/step profiled): {phases}. Top ops by {p['top_ops_by']}: {ops}.")
    return out + [""]
