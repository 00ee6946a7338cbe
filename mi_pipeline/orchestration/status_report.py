"""Where a run stands, gathered from the record, the checkpoints, SLURM and the processes themselves.

The progress record says what the jobs last wrote; this module checks it against the world (is the
recorded process alive? what does SLURM say of the job?) so ``status`` never shows a dead stage as
running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mi_pipeline.data import folds as fold_split
from mi_pipeline.graph import MODEL_STAGES, STAGES
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration import jobs
from mi_pipeline.orchestration.health import inspect_stage
from mi_pipeline.orchestration.progress import STATES, ProgressFile, StageRecord

TROUBLE_LINES = 5
MYOCARDIUM_ONLY = "myocardium only: trained on the cine labels, without LGE (its infarct is not estimated)"


def collect(layout: RunLayout) -> dict[str, Any]:
    progress = ProgressFile.for_run(layout).read()
    states = jobs.slurm_states_of(list(progress.stages.values()))
    stages = {stage: _stage_report(layout, stage, progress.stages[stage], states) for stage in STAGES}
    report: dict[str, Any] = {"run_dir": str(layout.root), "state": progress.state, "stages": stages,
                              "notes": progress.notes}
    folds = [RunLayout(root) for root in fold_split.fold_roots(layout.root)]
    if folds:  # a k-fold run: each fold is a run of its own, reported the same way
        report["folds"] = {str(fold.fold_index): collect(fold) if fold.root.is_dir() else _missing_fold(fold)
                           for fold in folds}
        report["top_state"] = progress.state  # the data stage's own record
        report["state"] = min((f["state"] for f in report["folds"].values()),  # a missing fold is least advanced
                              key=lambda state: STATES.index(state) if state in STATES else -1)
    split = fold_split.folds_path(layout.root)
    report["notes"] = [*report["notes"], *(f"{p}: not one of the {len(folds)} folds of {split}; ignored"
                                           for p in fold_split.unlisted_folders(layout.root))]
    return report


def _missing_fold(fold: RunLayout) -> dict[str, Any]:
    """A fold the split file lists whose folder is gone (what predict refuses to ensemble without)."""
    gone = {"status": "missing", "detail": f"{fold.root} is missing"}
    return {"run_dir": str(fold.root), "state": "missing", "notes": [f"{fold.root}: missing"],
            "stages": {stage: dict(gone) for stage in STAGES}}


def _stage_report(layout: RunLayout, stage: str, record: StageRecord, slurm: dict[str, str]) -> dict[str, Any]:
    status, detail = record.status, record.note
    slurm_state = slurm.get(record.job_id or "") if record.executor == "slurm" else None
    if status in ("running", "pending") and record.executor != "slurm" and not jobs.process_alive(record):
        if status == "running":
            status, detail = "failed", f"process {record.pid} on {record.host} ended without reporting (killed?)"
        else:
            status, detail = "not_started", f"its submitter (pid {record.pid}) ended before starting it"
    if status in ("pending", "running") and slurm_state is not None:
        if slurm_state in jobs.ACTIVE_STATES:
            status = "running" if slurm_state in ("RUNNING", "COMPLETING") else "pending"
        elif slurm_state != "COMPLETED":
            status, detail = "failed", f"job {record.job_id} ended {slurm_state}"
    report: dict[str, Any] = {
        "status": status, "epoch": record.epoch, "epochs": record.epochs, "best_metric": record.best_metric,
        "metric_name": record.metric_name, "attempts": record.attempts, "requeues": record.requeues,
        "job_id": record.job_id, "slurm_state": slurm_state, "log": record.log, "error": record.error,
        "detail": detail,
    }
    if stage != "data":
        health = inspect_stage(layout, stage)
        report["best_model"] = "ok" if health.best_ok else health.best_problem
        report["myocardium_only"] = bool(health.best_facts.get("myocardium_only"))
    if status == "failed":
        report["trouble"] = _tail(layout.train_log(stage), TROUBLE_LINES)
    return report


def _tail(path: Path, count: int) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-count:]
    except OSError:
        return []


def render(report: dict[str, Any]) -> str:
    text = _render_run(report)
    if report.get("folds"):
        text += "\n" + render_folds(report["folds"])
    return text


def render_folds(folds: dict[str, dict[str, Any]]) -> str:
    """One row per fold: its seed state, then each model stage's status, epoch and job."""
    def cell(info: dict[str, Any]) -> str:
        text = str(info["status"])
        if info.get("epochs"):
            text += f" {info['epoch']}/{info['epochs']}"
        if info.get("job_id") and info["status"] in ("pending", "running", "failed"):
            text += f" job {info['job_id']}"
        return text

    rows = [("fold", "state", *MODEL_STAGES)]
    rows += [(k, f["state"], *(cell(f["stages"][s]) for s in MODEL_STAGES)) for k, f in folds.items()]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [f"folds: {len(folds)}"] + ["  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()
                                         for row in rows]
    for k, fold in folds.items():
        for stage, info in fold["stages"].items():
            if info["status"] == "failed":
                lines.append(f"  fold {k} {stage}: {info.get('error') or info.get('detail') or 'failed'}")
    for stage in MODEL_STAGES:  # what the data cannot feed (or feeds in part), once for the folds it concerns
        left = {info.get("detail") for f in folds.values() if (info := f["stages"][stage])["status"] == "left_out"}
        lines += [f"  {stage}: {why}" for why in sorted(w for w in left if w)]
        part = [k for k, f in folds.items() if f["stages"][stage].get("myocardium_only")]
        if part:
            lines.append(f"  {stage} (fold{'s' if len(part) > 1 else ''} {', '.join(part)}): {MYOCARDIUM_ONLY}")
    return "\n".join(lines)


def _render_run(report: dict[str, Any]) -> str:
    lines = [f"run: {report['run_dir']}", f"state: {report['state']}"]
    if report.get("folds"):
        lines[-1] += (f" (the least advanced of {len(report['folds'])} folds: "
                      + ", ".join(f"{k} {f['state']}" for k, f in report["folds"].items()) + ")")
    lines += [f"note: {note}" for note in report["notes"]]
    for stage, info in report["stages"].items():
        if report.get("folds") and stage != "data":
            continue  # a k-fold run trains its models in the folds (the table below)
        mark = "✓" if info["status"] == "done" else "–" if info["status"] == "left_out" else "✗"
        parts = [f"{mark} {stage:13} {info['status']:11}"]
        if info.get("epochs"):
            parts.append(f"epoch {info['epoch']}/{info['epochs']}")
        if info.get("best_metric") is not None:
            parts.append(f"best {info.get('metric_name') or 'metric'}={info['best_metric']:.4f}")
        if info.get("attempts"):
            parts.append(f"attempts {info['attempts']}")
        if info.get("job_id"):
            parts.append(f"job {info['job_id']}" + (f" ({info['slurm_state']})" if info.get("slurm_state") else ""))
        if stage != "data" and info.get("best_model") not in ("ok", "missing"):
            parts.append("best_model.pth corrupted")
        lines.append("  ".join(parts))
        if info["status"] == "left_out" and info.get("detail"):
            lines.append(f"      {info['detail']}")
        if info.get("myocardium_only"):
            lines.append(f"      {MYOCARDIUM_ONLY}")
        if info["status"] == "failed":
            for reason in (info.get("error"), info.get("detail")):
                if reason:
                    lines.append(f"      {reason}")
            lines += [f"      | {line}" for line in info.get("trouble", [])]
    return "\n".join(lines)
