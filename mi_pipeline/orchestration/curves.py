"""Training curves as PNG files from ``metrics.jsonl``, for people without a TensorBoard server.

``python -m mi_pipeline.status --plot`` writes ``logs/<stage>/curves.png``: the training loss, every
validation figure beside its baseline (``*_identity`` / ``*_before`` share the panel of the figure
they are the baseline of), and the learning rate, over epochs; the best epoch is marked, and the title
and that metric's panel say which validation metric chose it (the ``metric_name`` recorded in the
stage's ``best_model.pth``, higher or lower better as the stage's task defines it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mi_pipeline.clinical.figures import save_figure
from mi_pipeline.graph import MODEL_STAGES
from mi_pipeline.layout import RunLayout

BASELINE_SUFFIXES = ("_identity", "_before", "_baseline")
NOT_CURVES = ("epoch", "step", "best", "seconds", "labels_available")


def _panels(records: list[dict[str, Any]]) -> list[list[str]]:
    keys = [k for k in dict.fromkeys(k for r in records for k in r)
            if k not in NOT_CURVES and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                           for r in records)]
    panels: dict[str, list[str]] = {}
    for key in keys:
        base = next((key[: -len(s)] for s in BASELINE_SUFFIXES if key.endswith(s) and key[: -len(s)] in keys), key)
        panels.setdefault(base, []).append(key)
    return list(panels.values())


def best_epoch_metric(layout: RunLayout, stage: str) -> tuple[str, bool] | None:
    """(metric name, higher is better) that picked ``stage``'s best epoch, from its best_model.pth; None
    when there is none or it cannot be read (the curves are still drawn, without the claim)."""
    from mi_pipeline.engine import checkpoint as ckpt
    from mi_pipeline.errors import UserError
    from mi_pipeline.stages import registry

    try:
        payload = ckpt.load_checkpoint(layout.best(stage), required=("metric_name",))
    except (UserError, OSError):
        return None
    return str(payload["metric_name"]), bool(registry.stage(stage).task.higher_is_better)


def plot_stage(records: list[dict[str, Any]], stage: str, path: Path,
               chooser: tuple[str, bool] | None = None) -> Path:
    """The stage's curves; ``chooser`` (see ``best_epoch_metric``) names the metric that picks the best epoch."""
    from matplotlib.figure import Figure

    panels = _panels(records)
    fig = Figure(figsize=(4.2 * min(len(panels), 3), 3.2 * ((len(panels) + 2) // 3)))
    epochs = [r["epoch"] for r in records]
    best = [r["epoch"] for r in records if r.get("best")]
    for i, keys in enumerate(panels):
        ax = fig.add_subplot((len(panels) + 2) // 3, min(len(panels), 3), i + 1)
        for key in keys:
            values = [r.get(key) for r in records]
            style = "--" if key != keys[0] else "-"
            ax.plot(epochs, [float("nan") if v is None else v for v in values], style, marker=".", label=key)
        if best and keys[0] != "lr":
            ax.axvline(best[-1], color="grey", lw=0.8, ls=":", label=f"best (epoch {best[-1]})")
        picks = chooser is not None and chooser[0] in keys
        ax.set_title(f"{keys[0]}\n(picks the best epoch)" if picks else keys[0],
                     fontweight="bold" if picks else "normal")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    title = f"{stage}: {len(records)} epoch(s)"
    if chooser is not None:
        title += (f"; best epoch{f' {best[-1]}' if best else ''} chosen by validation {chooser[0]} "
                  f"({'higher' if chooser[1] else 'lower'} is better)")
    else:
        title += "; no best_model.pth: the metric that picks the best epoch is not recorded"
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_run(layout: RunLayout) -> list[Path]:
    """``logs/<stage>/curves.png`` for every trained stage with at least one epoch logged."""
    from mi_pipeline.engine.runlog import StageLog

    written = []
    for stage in MODEL_STAGES:
        if not (layout.log_dir(stage) / "metrics.jsonl").is_file():
            continue
        records = [r for r in StageLog(layout.log_dir(stage), stage, files=False).read_metrics()
                   if isinstance(r.get("epoch"), int)]
        if records:
            written.append(plot_stage(records, stage, layout.log_dir(stage) / "curves.png",
                                      best_epoch_metric(layout, stage)))
    return written
