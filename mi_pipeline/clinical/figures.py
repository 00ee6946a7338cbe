"""Pictures a clinician reads, drawn with matplotlib (Agg backend) and written atomically.

Why matplotlib: a figure is read by a person, so it needs what the hand-made PNG of ``qc.py`` could
not give: a title with the subject and the numbers, labelled columns and rows, a legend, a colour bar
with units. Each builder returns the ``Figure`` (tests read its texts with ``figure_texts``), and
``save_figure`` renders it to PNG bytes in memory and writes them through ``fsio`` (temp file, fsync,
rename), so a crash never leaves half a picture.

* ``qc_figure``: per basal / mid / apical slice, ED, ES, motion magnitude ED->ES (mm) and the
  segmentation overlay (myocardium, infarct);
* ``bullseye_figure``: AHA 17-segment bull's-eye of infarct extent (16 segments from the short-axis
  stack; the apical cap, 17, is drawn as not assessed);
* ``evaluation_figures``: per stage the model versus its baseline, Bland-Altman of infarct size,
  and the ROC of AHA-segment detection.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot-free figure creation
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch, Wedge  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from mi_pipeline.fsio import atomic_write_bytes  # noqa: E402

MYO_COLOUR, INFARCT_COLOUR = "#2ecc40", "#ff2020"
DPI = 110
INFARCTED_PERCENT = 10.0

# bull's-eye geometry: (segment, ring inner, ring outer, start deg, end deg); anterior on top, septum on the left
_BASAL_MID_NAMES = ("anterior", "anteroseptal", "inferoseptal", "inferior", "inferolateral", "anterolateral")
_APICAL_NAMES = ("anterior", "septal", "inferior", "lateral")


def _bullseye_layout() -> list[tuple[int, float, float, float, float]]:
    cells = []
    for first, r0, r1 in ((1, 0.75, 1.0), (7, 0.5, 0.75)):
        for i in range(6):  # segment 1 centred at 90 deg, then counter-clockwise toward the septum (left)
            centre = 90.0 + 60.0 * i
            cells.append((first + i, r0, r1, centre - 30.0, centre + 30.0))
    for i in range(4):
        centre = 90.0 + 90.0 * i
        cells.append((13 + i, 0.25, 0.5, centre - 45.0, centre + 45.0))
    return cells


def figure_texts(fig: Figure) -> list[str]:
    """Every non-empty text drawn in ``fig`` (titles, axis labels, legends, colour bars, annotations)."""
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> None:
    """Render ``fig`` to PNG in memory, then write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _gray(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, (1, 99.5))
    return float(lo), float(max(hi, lo + 1e-6))


def qc_figure(subject: str, cine: np.ndarray, es: int, fields: np.ndarray | None, pred: np.ndarray,
              slices: Sequence[int], levels: Sequence[str | None], *, infarct_percent: float, ed_frame: int,
              es_frame: int, spacing_mm: float) -> Figure:
    """The QC figure. cine (Z, T, H, W) on the crop grid, fields (Z, T, 2, H, W) pixels or None, pred (Z, H, W)."""
    n = len(slices)
    fig = Figure(figsize=(13.0, 3.0 * n + 1.2), layout="constrained")
    axes = fig.subplots(n, 4, squeeze=False)
    fig.suptitle(f"{subject}: infarct {infarct_percent:.1f} % of LV myocardium   |   ED frame {ed_frame}, "
                 f"ES frame {es_frame}", fontsize=14, fontweight="bold")
    mags = None
    if fields is not None:
        mags = np.hypot(fields[:, es, 0], fields[:, es, 1]) * spacing_mm
    vmax = float(np.percentile(mags, 99.5)) if mags is not None and mags.size else 1.0
    overlay_cmap = ListedColormap([(0, 0, 0, 0), MYO_COLOUR, INFARCT_COLOUR])
    heat = None
    columns = (f"cine at ED (frame {ed_frame})", f"cine at ES (frame {es_frame})", "motion ED \u2192 ES",
               "segmentation on ED")
    for row, k in enumerate(slices):
        ed_img, es_img = cine[k, 0], cine[k, es]
        lo, hi = _gray(ed_img)
        axes[row, 0].imshow(ed_img, cmap="gray", vmin=lo, vmax=hi)
        axes[row, 1].imshow(es_img, cmap="gray", vmin=lo, vmax=hi)
        if mags is not None:
            heat = axes[row, 2].imshow(mags[k], cmap="inferno", vmin=0.0, vmax=max(vmax, 1e-6))
        else:
            axes[row, 2].text(0.5, 0.5, "no motion model", ha="center", va="center", transform=axes[row, 2].transAxes)
        axes[row, 3].imshow(ed_img, cmap="gray", vmin=lo, vmax=hi)
        axes[row, 3].imshow(np.ma.masked_equal(pred[k].astype(np.int16), 0), cmap=overlay_cmap, vmin=0, vmax=2,
                            alpha=0.55, interpolation="nearest")
        myo_k, inf_k = int((pred[k] > 0).sum()), int((pred[k] == 2).sum())
        pct = 100.0 * inf_k / myo_k if myo_k else 0.0
        axes[row, 3].text(0.02, 0.04, f"infarct {pct:.1f} %", color="white", fontsize=10, fontweight="bold",
                          transform=axes[row, 3].transAxes, bbox={"facecolor": "black", "alpha": 0.6, "pad": 2})
        level = levels[k] if k < len(levels) and levels[k] else "slice"
        axes[row, 0].set_ylabel(f"{level}\n(slice {k + 1} of {cine.shape[0]})", fontsize=11)
        for col in range(4):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(columns[col], fontsize=11)
    if heat is not None:
        bar = fig.colorbar(heat, ax=axes.ravel().tolist(), location="right", shrink=0.7, pad=0.02)
        bar.set_label("motion magnitude ED \u2192 ES (mm), third column")
    fig.legend(handles=[Patch(facecolor=MYO_COLOUR, alpha=0.7, label="myocardium"),
                        Patch(facecolor=INFARCT_COLOUR, alpha=0.7, label="infarct")],
               loc="outside lower center", ncol=2, fontsize=11, title="segmentation (fourth column)", frameon=True)
    return fig


def bullseye_figure(subject: str, extents_percent: dict[int, float | None], *, anchor: str,
                    infarct_percent: float | None = None) -> Figure:
    """AHA 17-segment bull's-eye of infarct extent (% of each segment's myocardium).

    ``extents_percent`` maps 1..16 to a percentage or None (no myocardium found there); 17 is never
    assessed from a short-axis stack. Segments at or above 10 % are outlined as infarcted.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig = Figure(figsize=(7.6, 7.6))
    ax = fig.add_axes((0.04, 0.17, 0.74, 0.72))
    cax = fig.add_axes((0.82, 0.2, 0.03, 0.55))
    cmap, norm = colormaps["Reds"], Normalize(0.0, 100.0)
    for seg, r0, r1, a0, a1 in _bullseye_layout():
        value = extents_percent.get(seg)
        infarcted = value is not None and value >= INFARCTED_PERCENT
        colour = cmap(norm(value)) if value is not None else "#d9d9d9"
        ax.add_patch(Wedge((0, 0), r1, a0, a1, width=r1 - r0, facecolor=colour, edgecolor="black", linewidth=0.8))
        if infarcted:  # outline drawn above every fill, so neighbours cannot hide it
            ax.add_patch(Wedge((0, 0), r1, a0, a1, width=r1 - r0, facecolor="none", edgecolor="black",
                               linewidth=2.6, zorder=3))
        mid, rad = np.radians((a0 + a1) / 2), (r0 + r1) / 2
        label = f"{seg}\n{value:.0f} %" if value is not None else f"{seg}\nn/a"
        dark = value is not None and value > 55
        ax.text(rad * np.cos(mid), rad * np.sin(mid), label, ha="center", va="center", fontsize=10,
                color="white" if dark else "black", fontweight="bold" if infarcted else "normal")
    ax.add_patch(Wedge((0, 0), 0.25, 0, 360, facecolor="white", edgecolor="black", hatch="//", linewidth=0.8))
    ax.text(0, 0, "17\nnot\nassessed", ha="center", va="center", fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    for text, x, y, rot in (("anterior", 0, 1.1, 0), ("inferior", 0, -1.1, 0), ("septal", -1.1, 0, 90),
                            ("lateral", 1.1, 0, -90)):
        ax.text(x, y, text, ha="center", va="center", fontsize=11, rotation=rot, style="italic")
    ax.set_xlim(-1.22, 1.22)
    ax.set_ylim(-1.22, 1.22)
    ax.set_aspect("equal")
    ax.axis("off")
    title = f"{subject}: AHA 17-segment infarct extent"
    if infarct_percent is not None:
        title += f"\ninfarct {infarct_percent:.1f} % of LV myocardium"
    fig.suptitle(title, fontsize=13, fontweight="bold")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.set_label("infarct extent (% of segment myocardium)")
    fig.legend(handles=[Patch(facecolor="white", edgecolor="black", linewidth=2.6,
                              label=f"infarcted segment (\u2265 {INFARCTED_PERCENT:g} %)"),
                        Patch(facecolor="white", edgecolor="black", hatch="//", label="17 apex: not assessed"),
                        Patch(facecolor="#d9d9d9", edgecolor="black", label="n/a: no myocardium found")],
               loc="lower center", bbox_to_anchor=(0.45, 0.05), fontsize=9, ncol=2, frameon=False)
    fig.text(0.45, 0.015, f"segments numbered from: {anchor}", ha="center", va="bottom", fontsize=9)
    return fig


# --- evaluate ------------------------------------------------------------------------------------

SUMMARY_MEASURES = (
    ("motion", "ED\u2192ES myocardium Dice", "myo_dice", "myo_dice_identity", "identity (no motion)"),
    ("registration", "cine\u2194LGE myocardium Dice", "myo_dice_after", "myo_dice_before", "no registration"),
    ("segmentation", "infarct Dice", "infarct_dice", ("baseline_no_infarct", "infarct_dice"), "no infarct"),
    ("segmentation", "AHA segment AUC", "segment_auc", ("baseline_no_infarct", "segment_auc"), "no infarct"),
)


def _baseline(section: dict[str, Any], key: Any) -> float | None:
    if isinstance(key, tuple):
        return (section.get(key[0]) or {}).get(key[1])
    return section.get(key)


def summary_figure(result: dict[str, Any]) -> Figure:
    """One panel per scored stage: the model versus its trivial baseline, with the numbers written on."""
    stages = [s for s in ("motion", "registration", "segmentation")
              if isinstance(result.get(s), dict) and "skipped" not in result[s]]
    fig = Figure(figsize=(4.2 * max(len(stages), 1), 4.4))
    fig.suptitle(f"evaluate: {len(result.get('subjects', []))} subject(s), model vs baseline", fontsize=13,
                 fontweight="bold")
    if not stages:
        fig.text(0.5, 0.5, "no stage scored", ha="center")
        return fig
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    for ax, stage in zip(axes, stages):
        section = result[stage]
        rows = [m for m in SUMMARY_MEASURES if m[0] == stage]
        labels, ours, base = [], [], []
        for _, label, key, base_key, base_name in rows:
            labels.append(f"{label}\n(baseline: {base_name})")
            ours.append(section.get(key))
            base.append(_baseline(section, base_key))
        x = np.arange(len(rows))
        for offset, values, name, colour in ((-0.2, ours, "model", "#1f77b4"), (0.2, base, "baseline", "#bbbbbb")):
            heights = [v if v is not None else 0.0 for v in values]
            bars = ax.bar(x + offset, heights, width=0.38, label=name, color=colour, edgecolor="black")
            for bar, v in zip(bars, values):
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, "n/a" if v is None else f"{v:.2f}",
                        ha="center", va="bottom", fontsize=9)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("score (higher is better)")
        ax.set_title(f"{stage} (n = {section.get('n_subjects', '?')})")
        ax.legend(fontsize=9, loc="upper right")
    return fig


def bland_altman_figure(true_pct: Sequence[float], pred_pct: Sequence[float], subjects: Sequence[str]) -> Figure:
    """Bland-Altman plot of infarct size (% of myocardium): difference predicted - true vs their mean."""
    t, p = np.asarray(true_pct, float), np.asarray(pred_pct, float)
    mean, diff = (t + p) / 2, p - t
    bias = float(diff.mean()) if diff.size else 0.0
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.add_subplot()
    ax.scatter(mean, diff, color="#1f77b4", edgecolor="black", zorder=3, label="subject")
    if len(subjects) <= 20:
        for x, y, name in zip(mean, diff, subjects):
            ax.annotate(str(name), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(0.0, color="#2ca02c", linewidth=1, label="no difference")
    ax.axhline(bias, color="black", label=f"bias {bias:+.2f} points")
    lo, hi = bias - 1.96 * sd, bias + 1.96 * sd
    ax.axhline(lo, color="gray", linestyle="--", label=f"limits of agreement {lo:+.2f} / {hi:+.2f} (bias \u00b1 1.96 SD)")
    ax.axhline(hi, color="gray", linestyle="--")
    values = np.r_[diff, 0.0, lo, hi]
    margin = 0.15 * max(float(values.max() - values.min()), 1.0)
    ax.set_ylim(float(values.min()) - margin, float(values.max()) + 2.5 * margin)  # room for the legend
    ax.text(0.01, 0.02, f"n = {diff.size} subjects", transform=ax.transAxes, ha="left", va="bottom", fontsize=9)
    ax.set_xlabel("mean of predicted and true infarct size (% of myocardium)")
    ax.set_ylabel("predicted \u2212 true infarct size (points)")
    ax.set_title("Bland\u2013Altman: infarct size")
    ax.legend(fontsize=9, loc="upper right")
    return fig


def roc_points(scores: Sequence[float], labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) over every threshold, from (0, 0) to (1, 1)."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps, fps = np.cumsum(y)[distinct], np.cumsum(~y)[distinct]
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def roc_figure(scores: Sequence[float], labels: Sequence[bool], auc: float | None) -> Figure:
    """ROC of AHA-segment infarct detection (segment infarcted when >= 10 % in truth; score = predicted extent)."""
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.add_subplot()
    labels_arr = np.asarray(labels, bool)
    if labels_arr.size and labels_arr.any() and not labels_arr.all():
        fpr, tpr = roc_points(scores, labels)
        ax.plot(fpr, tpr, color="#d62728", linewidth=2,
                label=f"model (AUC {auc:.3f})" if auc is not None else "model")
    else:
        ax.text(0.5, 0.5, "ROC undefined: needs infarcted and healthy segments", ha="center", fontsize=9)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="chance / no-infarct baseline (AUC 0.5)")
    ax.set_xlabel("false positive rate (1 \u2212 specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(f"AHA segment detection ROC ({int(labels_arr.sum())} infarcted of {labels_arr.size} segments)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=9, loc="lower right")
    return fig


def write_evaluation_figures(result: dict[str, Any], folder: str | os.PathLike[str]) -> list[str]:
    """``summary.png`` always; ``bland_altman.png`` and ``segment_roc.png`` when segmentation was scored."""
    from pathlib import Path

    folder = Path(folder)
    written = []
    save_figure(summary_figure(result), folder / "summary.png")
    written.append(str(folder / "summary.png"))
    seg = result.get("segmentation")
    if isinstance(seg, dict) and "skipped" not in seg:
        per = seg["per_subject"]
        save_figure(bland_altman_figure(per["infarct_percent_true"], per["infarct_percent_pred"], per["subject"]),
                    folder / "bland_altman.png")
        roc = seg.get("segment_roc") or {"labels": [], "scores": []}
        save_figure(roc_figure(roc["scores"], roc["labels"], seg.get("segment_auc")), folder / "segment_roc.png")
        written += [str(folder / "bland_altman.png"), str(folder / "segment_roc.png")]
    return written
