"""Figures a reader can check against each other, tested by what is drawn: orientation letters from the
affine, AHA sector numbers where ``aha.segment_map`` puts the segments, the RV-insertion mark at the
angle report.json records, motion only over the myocardium, the fold-disagreement column, the trust
line, and a Bland-Altman that states its n and cuts no label off."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import AxesImage

from mi_pipeline import metrics
from mi_pipeline.clinical import aha, figures

Z, T, H, W = 6, 4, 48, 48


@pytest.fixture(scope="module")
def heart():
    rng = np.random.default_rng(1)
    cine = rng.random((Z, T, H, W)).astype(np.float32)
    fields = rng.normal(size=(Z, T, 2, H, W)).astype(np.float32)
    yy, xx = np.mgrid[:H, :W]
    pred = np.zeros((Z, H, W), np.uint8)
    for k in range(Z):  # rings shrinking toward the apex at slice 5
        r = np.hypot(yy - 22.0, xx - 25.0)
        outer = 14 - k
        ring = (r > outer - 4) & (r < outer)
        pred[k, ring] = 1
        pred[k, ring & (xx > 28)] = 2
    affine = np.array([[0.0, -1.6, 0, 10], [-1.6, 0, 0, 20], [0, 0, 8.0, 0], [0, 0, 0, 1]])  # rows -> P, cols -> L
    return cine, fields, pred, affine


def _anchor(pred: np.ndarray, method: str = "rv_images") -> dict:
    has = [bool(m.any()) for m in pred > 0]
    angles = [(100.0 + 7 * k) if m else None for k, m in enumerate(has)]
    return aha.Anchor(method=method, angles_deg=angles, found=has, direction=-1).to_json()


def _qc(heart, anchor, **kw):
    cine, fields, pred, affine = heart
    levels = metrics.level_of_slices(pred > 0)
    slices = [0, 2, 4]
    fig = figures.qc_figure("s1", cine, 2, fields, pred, slices, levels, infarct_percent=20.0, ed_frame=0,
                            es_frame=2, spacing_mm=1.6, affine=affine, anchor=anchor, **kw)
    return fig, slices, levels


def test_orientation_letters_come_from_the_affine(heart) -> None:
    assert figures.orientation_letters(heart[3]) == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    fig, _, _ = _qc(heart, _anchor(heart[2]))
    ax = fig.axes[0]
    letters = {t.get_text(): t.get_position() for t in ax.texts if t.get_text() in "APLR" and len(t.get_text()) == 1}
    assert letters["A"][1] > 0.9 and letters["P"][1] < 0.1 and letters["R"][0] < 0.1 and letters["L"][0] > 0.9


def test_insertion_mark_where_report_says_and_sectors_match_the_segment_map(heart) -> None:
    _, _, pred, _ = heart
    anchor = _anchor(pred)
    fig, slices, levels = _qc(heart, anchor)
    grid = np.asarray(fig.axes[:len(slices) * 4]).reshape(len(slices), 4)
    segment_map = aha.segment_map(pred > 0, aha.Anchor(method="rv_images", angles_deg=anchor["anterior_insertion_deg"],
                                                       found=anchor["found_on_slice"], direction=-1))
    for row, k in enumerate(slices):
        ax = grid[row, 3]
        marks = [a for a in ax.get_lines() if a.get_label() == figures.INSERTION_LABEL]
        assert len(marks) == 1
        (x,), (y,) = marks[0].get_data()
        rr, cc = np.nonzero(pred[k] > 0)
        angle = np.degrees(np.arctan2(-(y - rr.mean()), x - cc.mean())) % 360.0
        assert aha.angle_error_deg(angle, anchor["anterior_insertion_deg"][k]) < 1.0
        numbers = [t for t in ax.texts if t.get_text().isdigit()]
        assert len(numbers) == (4 if levels[k] == "apical" else 6)
        for text in numbers:  # the number drawn in a sector is the segment the map puts there
            tx, ty = text.get_position()
            cr, cc0 = rr.mean(), cc.mean()
            px, py = cc0 + 0.5 * (tx - cc0), cr + 0.5 * (ty - cr)  # halfway in: inside the ring's sector
            assert segment_map[k, int(round(py)), int(round(px))] == int(text.get_text()), (k, text.get_text())


def test_fixed_anchor_sectors_match_the_fixed_map_and_have_no_mark(heart) -> None:
    _, _, pred, _ = heart
    anchor = aha.fixed_anchor([bool(m.any()) for m in pred > 0], "not found").to_json()
    fig, slices, _ = _qc(heart, anchor)
    fixed_map = metrics.aha_segment_map(pred > 0)
    ax = np.asarray(fig.axes[:len(slices) * 4]).reshape(len(slices), 4)[1, 3]
    assert not [a for a in ax.get_lines() if a.get_label() == figures.INSERTION_LABEL]
    rr, cc = np.nonzero(pred[slices[1]] > 0)
    for text in (t for t in ax.texts if t.get_text().isdigit()):
        tx, ty = text.get_position()
        px, py = cc.mean() + 0.5 * (tx - cc.mean()), rr.mean() + 0.5 * (ty - rr.mean())
        assert fixed_map[slices[1], int(round(py)), int(round(px))] == int(text.get_text())
    assert any("FIXED grid angle" in t for t in figures.figure_texts(fig))


def test_motion_only_over_myocardium_and_uncertainty_column(heart) -> None:
    _, _, pred, _ = heart
    spread = np.random.default_rng(2).random(pred.shape).astype(np.float32) * 0.3
    fig, slices, _ = _qc(heart, _anchor(pred), uncertainty=spread, trust="model: phantom only", alarm=True)
    grid = np.asarray(fig.axes[:len(slices) * 5]).reshape(len(slices), 5)
    heat = next(im for im in grid[0, 2].get_images() if im.get_cmap().name == "inferno")
    shown = heat.get_array()
    assert np.array_equal(np.ma.getmaskarray(shown), pred[slices[0]] == 0)  # nothing drawn off the myocardium
    texts = figures.figure_texts(fig)
    assert "fold disagreement" in texts and "fold disagreement: SD of infarct probability" in texts
    assert isinstance(grid[0, 4].get_images()[0], AxesImage)
    assert "model: phantom only" in fig.get_suptitle() and fig._suptitle.get_color() == "#c00000"


@pytest.mark.parametrize("n", [2, 5, 12])
def test_bland_altman_states_n_and_a_caveat_and_clips_no_label(n: int) -> None:
    rng = np.random.default_rng(n)
    true = rng.random(n) * 40
    fig = figures.bland_altman_figure(true, true + rng.normal(size=n) * 3, [f"subject_{i:03d}" for i in range(n)])
    texts = figures.figure_texts(fig)
    assert f"Bland\u2013Altman: infarct size (n = {n} subjects)" in texts
    caveat = [t for t in texts if t.startswith(f"n = {n} <")]
    assert bool(caveat) == (n < figures.BLAND_ALTMAN_MIN_N)
    assert any(t.startswith("limits of agreement") for t in texts) == (n >= 3)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    frame = fig.bbox
    ax = fig.axes[0]
    labels = [*ax.texts, ax.title, ax.xaxis.label, ax.yaxis.label, *fig.texts, *fig.legends[0].get_texts(),
              *([fig._suptitle] if fig._suptitle else [])]
    for text in (t for t in labels if t.get_text().strip()):  # tick labels outside the view are never drawn
        box = text.get_window_extent(renderer)
        inside = ax.bbox if text in ax.texts else frame
        assert inside.x0 - 1 <= box.x0 and box.x1 <= inside.x1 + 1 and frame.y0 - 1 <= box.y0 \
            and box.y1 <= frame.y1 + 1, text.get_text()


def test_sector_layout_lines_are_the_segment_boundaries() -> None:
    bounds, centres = figures.sector_layout("basal", 90.0, 1, fixed=False)
    assert bounds[0] == 90.0 and [seg for _, seg in centres] == [2, 3, 4, 5, 6, 1]
    bounds, centres = figures.sector_layout("apical", 90.0, -1, fixed=False)
    assert bounds[0] == 75.0 and centres[0] == (30.0, 14)
