"""Pictures a clinician reads, drawn with matplotlib (Agg backend) and written atomically.

Why matplotlib: a figure is read by a person, so it needs what the hand-made PNG of ``qc.py`` could
not give: a title with the subject and the numbers, labelled columns and rows, a legend, a colour bar
with units. Each builder returns the ``Figure`` (tests read its texts with ``figure_texts``), and
``save_figure`` renders it to PNG bytes in memory and writes them through ``fsio`` (temp file, fsync,
rename), so a crash never leaves half a picture.

* ``qc_figure``: per basal (the most basal) / mid / apical slice, numbered from 0 as in report.json:
  ED, ES, motion magnitude ED->ES (mm, over the myocardium only) and the segmentation overlay with
  the AHA sectors numbered as the bull's-eye numbers them and the anterior RV-insertion mark, all
  with orientation letters from the affine (a reader can check one against the other); a k-fold
  ensemble's fold disagreement as a fifth column; the trust line under the title;
* ``bullseye_figure``: AHA 17-segment bull's-eye of infarct extent (16 segments from the short-axis
  stack; the apical cap, 17, is drawn as not assessed);
* ``evaluation_figures``: per stage the model versus its baseline, Bland-Altman of infarct size
  (with n, and a caveat below ``BLAND_ALTMAN_MIN_N``), and the ROC of AHA-segment detection.
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


_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
INSERTION_LABEL = "anterior RV insertion (report.json aha_anchor)"


def orientation_letters(affine: np.ndarray) -> dict[str, str]:
    """Patient direction at each edge of a slice displayed with row 0 on top, from the crop grid's
    affine ((row, col, slice) voxels -> RAS mm), so a reader can tell left from right on the picture."""
    from nibabel.orientations import aff2axcodes

    down, right, _ = aff2axcodes(np.asarray(affine, float))
    return {"top": _OPPOSITE[down], "bottom": down, "left": _OPPOSITE[right], "right": right}


def sector_layout(level: str, anchor_deg: float, direction: int, fixed: bool) -> tuple[list[float], list[tuple[float, int]]]:
    """(boundary angles, [(centre angle, segment id)]) of one slice's AHA sectors, in degrees
    counter-clockwise from +column as displayed: the geometry ``clinical.aha.segment_map`` numbers by
    (``metrics.aha_segment_map`` for a fixed anchor), so the QC picture and the bull's-eye agree."""
    n, first = {"basal": (6, 1), "mid": (6, 7), "apical": (4, 13)}[level]
    width = 360.0 / n
    if fixed:  # sector i from the grid angle, counter-clockwise, is segment first + i
        offset, shift, direction = 0.0, 0, 1
    else:  # from the insertion point toward the septum: segment 2 (or 14, centred on the septum) first
        offset, shift = (15.0 if level == "apical" else 0.0), 1
    bounds = [(anchor_deg + direction * (offset + width * i)) % 360.0 for i in range(n)]
    centres = [((anchor_deg + direction * (offset + width * (i + 0.5))) % 360.0, first + (i + shift) % n)
               for i in range(n)]
    return bounds, centres


def _ring(myo: np.ndarray) -> tuple[float, float, float]:
    """Centroid (row, col) of a slice's myocardium and its outer radius (pixels)."""
    rr, cc = np.nonzero(myo)
    cr, cc0 = float(rr.mean()), float(cc.mean())
    return cr, cc0, float(np.hypot(rr - cr, cc - cc0).max()) + 1.0


def _at(cr: float, cc: float, radius: float, deg: float) -> tuple[float, float]:
    """(x, y) display coordinates of a point ``radius`` px from (cr, cc) at angle ``deg``."""
    phi = np.radians(deg)
    return cc + radius * np.cos(phi), cr - radius * np.sin(phi)


def draw_sectors(ax: Any, myo: np.ndarray, level: str, anchor: dict[str, Any], k: int) -> None:
    """AHA sector lines with their segment numbers, and the anterior RV insertion mark, on one slice."""
    angle = (anchor.get("anterior_insertion_deg") or [None] * (k + 1))[k]
    if not myo.any() or angle is None:
        return
    fixed = anchor.get("method") == "fixed"
    direction = 1 if anchor.get("septum_direction", "counter-clockwise") == "counter-clockwise" else -1
    cr, cc, radius = _ring(myo)
    bounds, centres = sector_layout(level, float(angle), direction, fixed)
    for deg in bounds:
        x, y = _at(cr, cc, radius + 2.0, deg)
        ax.plot([cc, x], [cr, y], color="white", linewidth=0.7, linestyle="--", alpha=0.8)
    for deg, seg in centres:
        x, y = _at(cr, cc, radius + 5.0, deg)
        ax.text(x, y, str(seg), color="yellow", fontsize=7, ha="center", va="center", fontweight="bold",
                clip_on=True)
    if not fixed:
        x, y = _at(cr, cc, radius, float(angle))
        ax.plot([x], [y], marker="*", markersize=13, color="cyan", markeredgecolor="black", linestyle="none",
                label=INSERTION_LABEL)


def _letters(ax: Any, letters: dict[str, str]) -> None:
    style = {"color": "yellow", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.5, 0.98, letters["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.02, letters["bottom"], ha="center", va="bottom", **style)
    ax.text(0.02, 0.5, letters["left"], ha="left", va="center", **style)
    ax.text(0.98, 0.5, letters["right"], ha="right", va="center", **style)


def qc_figure(subject: str, cine: np.ndarray, es: int, fields: np.ndarray | None, pred: np.ndarray,
              slices: Sequence[int], levels: Sequence[str | None], *, infarct_percent: float, ed_frame: int,
              es_frame: int, spacing_mm: float, affine: np.ndarray | None = None,
              anchor: dict[str, Any] | None = None, uncertainty: np.ndarray | None = None,
              trust: str | None = None, alarm: bool = False) -> Figure:
    """The QC figure. cine (Z, T, H, W) on the crop grid, fields (Z, T, 2, H, W) pixels or None, pred (Z, H, W).

    ``affine`` (crop grid -> RAS) gives the orientation letters; ``anchor`` (report.json's
    ``aha_anchor``) the sector lines and the insertion mark; ``uncertainty`` (Z, H, W), a k-fold
    ensemble's fold disagreement, a fifth column; ``trust`` a line under the title (red when ``alarm``:
    an implausible result, or not a measurement). Slices are numbered from 0, as in report.json.
    """
    n, cols = len(slices), 4 + (uncertainty is not None)
    fig = Figure(figsize=(3.3 * cols, 3.0 * n + 1.6), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    title = f"{subject}: infarct {infarct_percent:.1f} % of LV myocardium   |   ED frame {ed_frame}, ES frame {es_frame}"
    fig.suptitle(title + (f"\n{trust}" if trust else ""), fontsize=13, fontweight="bold",
                 color="#c00000" if alarm else "black")
    myo_all = pred > 0
    mags = np.hypot(fields[:, es, 0], fields[:, es, 1]) * spacing_mm if fields is not None else None
    inside = mags[myo_all] if mags is not None else np.zeros(0)
    vmax = max(float(np.percentile(inside, 99.5)) if inside.size else 1.0, 1e-6)
    overlay_cmap = ListedColormap([(0, 0, 0, 0), MYO_COLOUR, INFARCT_COLOUR])
    letters = orientation_letters(affine) if affine is not None else None
    heat = spread = None
    columns = [f"cine at ED (frame {ed_frame})", f"cine at ES (frame {es_frame})", "motion ED \u2192 ES (myocardium)",
               "segmentation on ED, AHA sectors"] + (["fold disagreement"] if uncertainty is not None else [])
    for row, k in enumerate(slices):
        ed_img, es_img = cine[k, 0], cine[k, es]
        lo, hi = _gray(ed_img)
        for col, img in ((0, ed_img), (1, es_img), (2, ed_img), (3, ed_img)):
            axes[row, col].imshow(img, cmap="gray", vmin=lo, vmax=hi)
        if mags is not None:  # over the ED myocardium only: blood and background motion means nothing here
            heat = axes[row, 2].imshow(np.ma.masked_where(~myo_all[k], mags[k]), cmap="inferno", vmin=0.0, vmax=vmax)
        else:
            axes[row, 2].text(0.5, 0.5, "no motion model", ha="center", va="center", transform=axes[row, 2].transAxes)
        axes[row, 3].imshow(np.ma.masked_equal(pred[k].astype(np.int16), 0), cmap=overlay_cmap, vmin=0, vmax=2,
                            alpha=0.55, interpolation="nearest")
        if uncertainty is not None:
            spread = axes[row, 4].imshow(uncertainty[k], cmap="magma", vmin=0.0,
                                         vmax=max(float(uncertainty.max()), 1e-6))
        myo_k, inf_k = int((pred[k] > 0).sum()), int((pred[k] == 2).sum())
        pct = 100.0 * inf_k / myo_k if myo_k else 0.0
        axes[row, 3].text(0.02, 0.1, f"infarct {pct:.1f} %", color="white", fontsize=10, fontweight="bold",
                          transform=axes[row, 3].transAxes, bbox={"facecolor": "black", "alpha": 0.6, "pad": 2})
        level = levels[k] if k < len(levels) and levels[k] else None
        if anchor is not None and level is not None:
            draw_sectors(axes[row, 3], myo_all[k], level, anchor, k)
        axes[row, 0].set_ylabel(f"{level or 'slice'}\nslice {k} (0-based, of 0..{cine.shape[0] - 1})", fontsize=11)
        for col in range(cols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-0.5, pred.shape[2] - 0.5)
            ax.set_ylim(pred.shape[1] - 0.5, -0.5)
            if letters is not None:
                _letters(ax, letters)
            if row == 0:
                ax.set_title(columns[col], fontsize=11)
    if heat is not None:
        bar = fig.colorbar(heat, ax=axes[:, 2].tolist(), location="bottom", shrink=0.9)
        bar.set_label("motion magnitude ED \u2192 ES (mm), myocardium")
    if spread is not None:
        bar = fig.colorbar(spread, ax=axes[:, 4].tolist(), location="bottom", shrink=0.9)
        bar.set_label("fold disagreement: SD of infarct probability")
    handles = [Patch(facecolor=MYO_COLOUR, alpha=0.7, label="myocardium"),
               Patch(facecolor=INFARCT_COLOUR, alpha=0.7, label="infarct")]
    if anchor is not None and anchor.get("method") != "fixed":
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="*", markersize=11, color="cyan", markeredgecolor="black",
                              linestyle="none", label="anterior RV insertion"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=10,
               title=_sector_note(anchor), frameon=True)
    return fig


def _sector_note(anchor: dict[str, Any] | None) -> str:
    if anchor is None:
        return "segmentation (fourth column)"
    if anchor.get("method") == "fixed":
        return ("segmentation; AHA sectors numbered from a FIXED grid angle (RV insertion not found), "
                "as in the bull's-eye")
    return "segmentation; AHA sectors numbered from the anterior RV insertion, as in the bull's-eye"


def bullseye_figure(subject: str, extents_percent: dict[int, float | None], *, anchor: str,
                    infarct_percent: float | None = None, trust: str | None = None, alarm: bool = False) -> Figure:
    """AHA 17-segment bull's-eye of infarct extent (% of each segment's myocardium).

    ``extents_percent`` maps 1..16 to a percentage or None (no myocardium found there); 17 is never
    assessed from a short-axis stack. Segments at or above 10 % are outlined as infarcted. ``trust``
    (the model's provenance and the plausibility verdict) is written under the title, red when ``alarm``.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig = Figure(figsize=(7.6, 7.6 + (0.9 if trust else 0.0)))
    ax = fig.add_axes((0.04, 0.15, 0.74, 0.72 - (0.09 if trust else 0.0)))
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
    if trust:
        title += f"\n{trust}"
    fig.suptitle(title, fontsize=12, fontweight="bold", color="#c00000" if alarm else "black")
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
        ax.set_title(f"{stage} (n = {section.get('n_subjects', '?')})"
                     + ("\nINFARCT NOT ESTIMATED: myocardium-only model" if section.get("infarct_not_estimated") else ""))
        ax.legend(fontsize=9, loc="upper right")
    return fig


BLAND_ALTMAN_MIN_N = 10  # fewer subjects: the limits of agreement are too uncertain to read as a range


def bland_altman_figure(true_pct: Sequence[float], pred_pct: Sequence[float], subjects: Sequence[str]) -> Figure:
    """Bland-Altman plot of infarct size (% of myocardium): difference predicted - true vs their mean.

    The limits of agreement (bias +- 1.96 SD) are drawn from 3 subjects on, and below
    ``BLAND_ALTMAN_MIN_N`` the figure says they are not reliable; n is always written. The legend sits
    below the axes and the x range leaves room for the subject names, so no label is cut off.
    """
    t, p = np.asarray(true_pct, float), np.asarray(pred_pct, float)
    mean, diff = (t + p) / 2, p - t
    n = int(diff.size)
    bias = float(diff.mean()) if n else 0.0
    sd = float(diff.std(ddof=1)) if n > 1 else 0.0
    fig = Figure(figsize=(7.5, 6.2), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(mean, diff, color="#1f77b4", edgecolor="black", zorder=3, label="subject")
    if n <= 20:
        for x, y, name in zip(mean, diff, subjects):
            ax.annotate(str(name), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(0.0, color="#2ca02c", linewidth=1, label="no difference")
    ax.axhline(bias, color="black", label=f"bias {bias:+.2f} points")
    values = [*diff.tolist(), 0.0]
    if n >= 3:
        lo, hi = bias - 1.96 * sd, bias + 1.96 * sd
        ax.axhline(lo, color="gray", linestyle="--",
                   label=f"limits of agreement {lo:+.2f} / {hi:+.2f} (bias \u00b1 1.96 SD)")
        ax.axhline(hi, color="gray", linestyle="--")
        values += [lo, hi]
    low, high = min(values), max(values)
    margin = 0.15 * max(high - low, 1.0)
    ax.set_ylim(low - margin, high + margin)
    if n:
        span = max(float(mean.max() - mean.min()), 1.0)
        ax.set_xlim(float(mean.min()) - 0.1 * span, float(mean.max()) + 0.35 * span)  # room for the names
    ax.set_xlabel("mean of predicted and true infarct size (% of myocardium)")
    ax.set_ylabel("predicted \u2212 true infarct size (points)")
    ax.set_title(f"Bland\u2013Altman: infarct size (n = {n} subjects)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=9, frameon=False)
    caveat = bland_altman_caveat(n)
    if caveat:
        fig.suptitle(caveat, fontsize=9, color="#c00000")
    return fig


def bland_altman_caveat(n: int) -> str | None:
    """What a reader must know about limits of agreement from ``n`` subjects (None when n is enough)."""
    if n >= BLAND_ALTMAN_MIN_N:
        return None
    if n < 3:
        return f"n = {n} < 3: no limits of agreement drawn (an SD needs more subjects)"
    return f"n = {n} < {BLAND_ALTMAN_MIN_N}: the limits of agreement are not reliable; read them as a rough range"


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
    """``summary.png`` always; ``bland_altman.png`` and ``segment_roc.png`` when segmentation's infarct was
    scored (not for a myocardium-only model).

    A k-fold run's figures are its pooled ones: every subject once, scored by the fold that held it out.
    """
    from pathlib import Path

    folder = Path(folder)
    if "cross_validation" in result:
        result = result["cross_validation"]["pooled"]
    written = []
    save_figure(summary_figure(result), folder / "summary.png")
    written.append(str(folder / "summary.png"))
    seg = result.get("segmentation")
    if isinstance(seg, dict) and "skipped" not in seg and not seg.get("infarct_not_estimated"):
        per = seg["per_subject"]
        save_figure(bland_altman_figure(per["infarct_percent_true"], per["infarct_percent_pred"], per["subject"]),
                    folder / "bland_altman.png")
        roc = seg.get("segment_roc") or {"labels": [], "scores": []}
        save_figure(roc_figure(roc["scores"], roc["labels"], seg.get("segment_auc")), folder / "segment_roc.png")
        written += [str(folder / "bland_altman.png"), str(folder / "segment_roc.png")]
    return written
