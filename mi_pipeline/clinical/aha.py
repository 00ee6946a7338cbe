"""AHA 16-segment model anchored to the anterior RV insertion point, as a reader places it.

Why: ``metrics.aha_segment_map`` starts its sectors at a fixed angle of the crop grid, which is only
right when every scanner orients its short-axis planes like the phantom does. A reader instead starts
at the anterior right-ventricular insertion point: segment 1 (anterior) ends there and segment 2
(anteroseptal) begins, the septum running from it toward the RV. This module finds that point per
slice, from the images (the RV blood pool is bright in cine) or from RV labels when a dataset has
them, and numbers the segments from it, so the numbers follow the anatomy, not the grid.

Angles are in the convention of ``metrics``: degrees counter-clockwise from the +column direction as
the slice is displayed (row 0 on top), around the slice's myocardial centroid. Arrays are (Z, H, W)
on a crop grid whose ``affine`` maps (row, col, slice) voxels to RAS millimetres.

In the images the RV is the blood pool beside the LV: a bright region, deep as well as long, that
beats, lies beside the epicardium along a plausible arc (no longer than labelled RVs do: the RV wraps
the septum only) and lies where the RV lies in patients and in the rest of the stack. 'Bright' is
judged against the blood around each pixel, not the LV's alone, because the RV's blood is often
darker than the LV's on real cine. Its insertion points are the ends of that contact arc, moved
outward by one RV free-wall thickness (3 mm), because a reader puts the insertion point where the RV
*wall* meets the LV (without that, the phantom's truth is missed by a systematic ~7 degrees toward
the septum; with it, ~2). Each slice's choice is checked against its neighbours', since the
insertion point turns slowly along the stack.

Which of the RV's two insertion points is anterior follows from the view's chirality
(``viewed_from_apex``): seen from the apex the septum runs counter-clockwise from it, seen from the
base clockwise, whatever the heart's orientation in the scanner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mi_pipeline import metrics

ANGLES = np.arange(0.0, 360.0, 1.0)
BAND_MM = (3.5, 8.0)  # where the RV is read, outside the LV epicardium (labels and bright regions alike)
BAND_FILL = 0.3  # the RV is at an angle where it fills more than this fraction of the band there
MIN_ARC_DEG, MAX_ARC_DEG = 40.0, 250.0
ANTERIOR_RAS = np.array([0.0, 1.0, 1.0]) / np.sqrt(2.0)
SEPTUM_SPAN_DEG = 120.0  # two 60-degree segments (2 and 3) between the insertion points
RV_RAS = np.array([0.77, 0.55, -0.19]) / np.linalg.norm([0.77, 0.55, -0.19])  # LV -> RV, mean of real hearts
PRIOR_FLOOR = 0.25  # weight of a bright arc pointing away from RV_RAS (a rotated heart can still be found)
RV_WALL_MM = 3.0  # normal RV free wall 2-5 mm: the insertion point lies one wall beyond the end of the bright blood
BLOOD_LEVEL = 0.5  # a pixel is blood when brighter than halfway from the slice's myocardium to its blood nearby
LOCAL_BLOOD_MM = 15.0  # 'nearby': a window about one RV cavity deep, so that the RV's own blood sets its threshold
LOCAL_BLOOD_PERCENTILE = 90.0  # the window's brightest pixels stand for its blood
MIN_CONTACT_DEG = MIN_ARC_DEG / 2  # an RV's bright part can touch less than its label (dark tips; ~30 deg, thick wall)
MAX_CONTACT_DEG = 150.0  # the RV wraps the septum only: labelled RVs lie beside <= 142 deg (419 real slices); wider is fat
STACK_WINDOW = 2  # neighbouring slices either side that a slice's insertion point is checked against
STACK_TOLERANCE_DEG = 30.0  # how far a slice may disagree with them before another candidate is preferred


@dataclass
class Anchor:
    """Where segment numbering starts on each slice.

    ``method``: ``rv_images`` | ``rv_labels`` | ``fixed``; ``angles_deg[k]`` the anterior insertion
    angle of slice k (None without myocardium); ``found[k]`` whether it was found on that slice itself
    (else borrowed from the others); ``direction`` +1 when the septum runs counter-clockwise from it.
    """

    method: str
    angles_deg: list[float | None]
    found: list[bool]
    direction: int = 1
    warning: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"method": self.method,
                "anterior_insertion_deg": [None if a is None else round(float(a), 1) for a in self.angles_deg],
                "found_on_slice": list(self.found), "septum_direction": "counter-clockwise" if self.direction > 0
                else "clockwise", "warning": self.warning}


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    rr, cc = np.nonzero(mask)
    return float(rr.mean()), float(cc.mean())


def _ray_points(center: tuple[float, float], radii_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of shape (angles, radii) along rays from ``center``."""
    phi = np.radians(ANGLES)[:, None]
    return center[0] - radii_px[None, :] * np.sin(phi), center[1] + radii_px[None, :] * np.cos(phi)


def _epicardium_px(myo: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """Outermost myocardial radius (pixels) along each angle."""
    radii = np.arange(0.0, max(myo.shape) / 2, 0.5)
    rows, cols = _ray_points(center, radii)
    inside = ndimage.map_coordinates(myo.astype(np.float32), [rows, cols], order=0, mode="constant") > 0.5
    last = np.where(inside.any(axis=1), inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1), 0)
    return radii[last]


def _band_radius_mm(myo: np.ndarray, spacing_mm: float) -> float:
    """Mean radius (mm) of the middle of the search band, for turning a wall thickness into an angle."""
    return float(_epicardium_px(myo, _centroid(myo)).mean()) * spacing_mm + sum(BAND_MM) / 2


def _band_points(myo: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols), each (angles, 10), of points across the band ``BAND_MM`` outside the epicardium."""
    center = _centroid(myo)
    radii = _epicardium_px(myo, center)[:, None] + np.linspace(BAND_MM[0], BAND_MM[1], 10)[None, :] / spacing_mm
    phi = np.radians(ANGLES)[:, None]
    return center[0] - radii * np.sin(phi), center[1] + radii * np.cos(phi)


def _band_fill(mask: np.ndarray, band: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Fraction of the band's points inside ``mask``, per angle."""
    inside = ndimage.map_coordinates(mask.astype(np.float32), list(band), order=0, mode="constant", cval=0.0)
    return inside.mean(axis=1)


def _world_dir(affine: np.ndarray, angle_deg: float) -> np.ndarray:
    """RAS direction of an in-plane angle on the crop grid (rows = axis 0, cols = axis 1)."""
    phi = np.radians(angle_deg)
    u0 = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    u1 = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    return -np.sin(phi) * u0 + np.cos(phi) * u1


def angle_of_world_dir(affine: np.ndarray, direction: np.ndarray) -> float:
    """In-plane angle (this module's convention) of a RAS direction projected onto the slice plane."""
    u0 = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    u1 = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    return float(np.degrees(np.arctan2(-(direction @ u0), direction @ u1)) % 360.0)


def viewed_from_apex(affine: np.ndarray, myo: np.ndarray) -> bool:
    """Whether the slices, as displayed (row 0 on top), are seen from the apex toward the base.

    The base is the end of the stack with the larger myocardium (``metrics.level_of_slices``' rule);
    the display looks along columns x rows. Why it matters: seen from the apex, the septum runs
    counter-clockwise from the anterior RV insertion point to the inferior one; seen from the base,
    clockwise. That is anatomy, so the anterior end of the RV arc follows from it whatever the
    heart's orientation in the scanner (patient axes only break a tie when the stack has no base).
    """
    areas = np.asarray(myo, bool).reshape(myo.shape[0], -1).sum(axis=1)
    idx = np.nonzero(areas)[0]
    half = len(idx) // 2
    if half == 0 or areas[idx[:half]].sum() == areas[idx[len(idx) - half:]].sum():
        return bool(_world_dir(affine, 90.0) @ ANTERIOR_RAS >= 0)  # no base to tell: patient axes
    base_first = areas[idx[:half]].sum() > areas[idx[len(idx) - half:]].sum()
    apex_dir = affine[:3, 2] * (1.0 if base_first else -1.0)
    u0 = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    u1 = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    return bool(np.cross(u1, u0) @ apex_dir < 0)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, length) of every circular run of True."""
    if flags.all() or not flags.any():
        return []
    start = int(np.argmin(flags))
    rolled = np.roll(flags, -start)
    edges = np.diff(np.concatenate([[0], rolled.astype(np.int8), [0]]))
    firsts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return [((int(a) + start) % len(flags), int(b - a)) for a, b in zip(firsts, ends)]


def _insertion_from_flags(flags: np.ndarray, apex_view: bool, strength: np.ndarray | None = None
                          ) -> tuple[float, int] | None:
    """(anterior insertion angle, septum direction) from per-angle 'RV here' flags, or None.

    The RV is the run of a plausible arc length with the highest mean ``strength`` (default: the first);
    its counter-clockwise-first end is the anterior insertion when seen from the apex, its last end
    when seen from the base (``viewed_from_apex``).
    """
    weight = np.ones(len(flags)) if strength is None else strength
    runs = [(a, n) for a, n in _runs(flags) if MIN_ARC_DEG <= n <= MAX_ARC_DEG]
    if not runs:
        return None
    first, length = max(runs, key=lambda r: float(np.take(weight, range(r[0], r[0] + r[1]), mode="wrap").mean()))
    return _anterior_end(first, length, apex_view)


def _anterior_end(first: int, length: int, apex_view: bool) -> tuple[float, int]:
    """(anterior insertion angle, septum direction) of an RV arc running counter-clockwise from ``first``.

    Seen from the apex the septum runs counter-clockwise from the anterior insertion, so that is the
    arc's first end; seen from the base it is the last end, and the septum runs clockwise.
    """
    if apex_view:
        return float(ANGLES[first]) % 360.0, 1
    return (float(ANGLES[(first + length - 1) % len(ANGLES)]) + 1.0) % 360.0, -1


def _circular_mean(angles: list[float]) -> float:
    vec = np.array([[np.cos(np.radians(a)), np.sin(np.radians(a))] for a in angles])
    return float(np.degrees(np.arctan2(vec[:, 1].mean(), vec[:, 0].mean())) % 360.0)


def _nearest_found(per_slice: list[tuple[float, int] | None], k: int) -> float:
    """Angle for slice ``k`` borrowed from the nearest slices that have one of their own (both when as near).

    Why the nearest, not all: the insertion point turns by up to ~50 degrees from apex to base in real
    hearts, so the mean of the whole stack can be wrong for an end slice by more than a segment's half.
    """
    found = [j for j, p in enumerate(per_slice) if p is not None]
    gap = min(abs(j - k) for j in found)
    return _circular_mean([per_slice[j][0] for j in found if abs(j - k) == gap])  # type: ignore[index]


def _finish(method: str, per_slice: list[tuple[float, int] | None], has_myo: list[bool]) -> Anchor:
    found = [p is not None for p in per_slice]
    if not any(found):
        return fixed_anchor(has_myo, f"no RV insertion point found ({method}); segments use the fixed angle "
                                     f"{metrics.AHA_START_DEG:g} deg of the crop grid and may be misnumbered")
    votes = [p[1] for p in per_slice if p is not None]
    direction = 1 if votes.count(1) >= votes.count(-1) else -1
    angles: list[float | None] = []
    for k, (p, myo) in enumerate(zip(per_slice, has_myo)):
        angles.append(None if not myo else (p[0] if p is not None else _nearest_found(per_slice, k)))
    anchor = Anchor(method=method, angles_deg=angles, found=[f and m for f, m in zip(found, has_myo)],
                    direction=direction)
    missing = [k for k, (f, m) in enumerate(zip(found, has_myo)) if m and not f]
    if missing:
        anchor.notes.append(f"slices {missing}: no insertion point of their own; the nearest slices' is used")
    return anchor


def fixed_anchor(has_myo: list[bool], warning: str) -> Anchor:
    return Anchor(method="fixed", angles_deg=[metrics.AHA_START_DEG if m else None for m in has_myo],
                  found=[False] * len(has_myo), direction=1, warning=warning)


@dataclass(frozen=True)
class _Candidate:
    """One bright region touching the LV on one slice: where its anterior insertion would be, and its weight."""

    angle_deg: float
    direction: int
    score: float


@dataclass(frozen=True)
class _Region:
    """One bright region beside the LV on one slice, before any prior: its contact arc and evidence.

    ``weight``: area (pixels) times mean motion (1 without motion); ``first``, ``length``: the contact
    arc in degrees, counter-clockwise from ``first``; ``wall_deg``: one RV wall as an angle on its slice.
    """

    weight: float
    first: int
    length: int
    wall_deg: float

    @property
    def middle_deg(self) -> float:
        return (self.first + self.length / 2) % 360.0


def _rv_regions(image: np.ndarray, myo: np.ndarray, motion: np.ndarray | None, spacing_mm: float) -> list[_Region]:
    """Every bright region outside the LV that touches it along a plausible arc: the RV candidates of a slice.

    Why regions, not a band of fixed depth: a thin bright arc (epicardial fat) and the RV blood pool
    look alike in a band a few millimetres wide, but the RV is a pool, deep as well as long, and it
    beats. A region is a connected set of pixels brighter than halfway between the slice's
    myocardium and the blood around them (``_blood_mask``: the RV's own, often darker than the LV's);
    it touches the LV where it fills the band the RV labels are read in (``_contact_arc``), and its
    insertion points are the ends of that contact arc (moved one RV wall outward, ``_candidates``).
    Its weight is its area times its mean motion (when given); the prior comes later, per stack.
    """
    cavity = ndimage.binary_fill_holes(ndimage.binary_closing(myo, iterations=3)) & ~myo  # basal rings open
    if cavity.sum() < 4:
        return []
    blood, muscle = float(np.median(image[cavity])), float(np.median(image[myo]))
    if blood <= muscle:
        return []
    regions, count = ndimage.label(_blood_mask(image, muscle, blood, spacing_mm) & ~(myo | cavity))
    wall_deg = float(np.degrees(RV_WALL_MM / _band_radius_mm(myo, spacing_mm)))
    return [_Region(float(region.sum()) * (1.0 if motion is None else float(motion[region].mean())), first, length,
                    wall_deg)
            for region, (first, length) in _touching_regions(regions, count, _band_points(myo, spacing_mm))]


def _candidates(regions: list[_Region], apex_view: bool, prior: np.ndarray) -> list[_Candidate]:
    """A slice's regions as RV candidates: the anterior insertion of each, scored by weight times prior."""
    found = []
    for r in regions:
        end, direction = _anterior_end(r.first, r.length, apex_view)
        score = r.weight * float(np.take(prior, range(r.first, r.first + r.length), mode="wrap").mean())
        found.append(_Candidate((end - direction * r.wall_deg) % 360.0, direction, score))
    return found


def _rv_prior(affine: np.ndarray, regions: list[list[_Region]]) -> np.ndarray:
    """Per angle, the soft prior that the RV lies there: ``PRIOR_FLOOR`` .. 1 around the expected LV -> RV direction.

    Expected direction: the mean of two unit vectors, where the RV lies in patients (``RV_RAS``
    projected on the slices through ``affine``) and where this stack's bright beating regions lie
    (their arcs' middles weighted by area times motion, all slices together). Why both: a header that
    does not give patient axes (ACDC: one affine for every subject, the labelled RV's direction 213-332
    degrees on the grid, the header's 306) puts the patients' direction up to ~90 degrees off, and
    anterior RV pieces lost to a mid-RV piece there; the stack's own regions point at the RV on most
    hearts but at a large bright distractor (fat, an atrium) on some (ACDC development: 3 of 50 off by
    > 40 degrees). Each alone was right on 127 of 145 development slices, together on 133.
    """
    patients = np.exp(1j * np.radians(angle_of_world_dir(affine, RV_RAS)))
    pull = sum(r.weight * np.exp(1j * np.radians(r.middle_deg)) for slice_regions in regions for r in slice_regions)
    images = pull / abs(pull) if abs(pull) > 0 else 0.0
    expected = float(np.degrees(np.angle(patients + images)))
    return PRIOR_FLOOR + (1.0 - PRIOR_FLOOR) * np.clip(np.cos(np.radians(ANGLES - expected)), 0.0, 1.0)


def _blood_mask(image: np.ndarray, muscle: float, blood: float, spacing_mm: float) -> np.ndarray:
    """Pixels brighter than halfway from the myocardium to the blood around them (not only the LV's).

    Why local: the RV's blood is often darker than the LV's on cine (ACDC: its regions' median ~0.8 of
    the LV's contrast; in dilated RVs with slow flow less), so one level taken from the LV cuts a dark
    RV into small pieces or misses it, and a brighter distractor wins. Here each pixel is judged
    against the blood within ``LOCAL_BLOOD_MM`` (that window's ``LOCAL_BLOOD_PERCENTILE``), which the
    RV pool itself supplies. That reference is clipped between halfway and all the way to the LV blood:
    it never raises the threshold above the LV's, and a window without blood (lung, liver) cannot pull
    it down to the myocardium's noise, so its floor is a quarter of the way to the LV blood.
    """
    size = max(3, int(round(LOCAL_BLOOD_MM / spacing_mm)))
    local = ndimage.percentile_filter(image.astype(np.float32), LOCAL_BLOOD_PERCENTILE, size=size)
    reference = np.clip(local, muscle + BLOOD_LEVEL * (blood - muscle), blood)
    return image > muscle + BLOOD_LEVEL * (reference - muscle)


def _contact_arc(region: np.ndarray, band: tuple[np.ndarray, np.ndarray]) -> tuple[int, int] | None:
    """(first angle, length) of the arc along which ``region`` lies beside the LV, or None if implausible.

    Beside: the region fills more than ``BAND_FILL`` of the band ``BAND_MM`` outside the epicardium,
    the rule the RV labels are read with (``anchor_from_labels``). Why the band, not any pixel near the
    epicardium: a thin bright layer hugging the epicardium (epicardial fat, 1-3 mm) joined to the RV
    pool would count as contact and run the arc on past the RV's end; the RV pool is deep, and fills
    the band (and regions then end where the labels' rule ends them). The arc is the shortest one
    covering every angle where the region is beside the LV, not the longest unbroken run: a connected
    pool that bulges away from the LV for a few degrees (real RVs do) is still one RV, and the longest
    run kept only its part past the bulge.
    Plausible: ``MIN_CONTACT_DEG`` to ``MAX_CONTACT_DEG``. A region beside more of the LV than any
    labelled RV is no RV (fat around the heart, or fat joined to the RV pool); ``_touching_regions``
    peels it instead.
    """
    flags = _band_fill(region, band) > BAND_FILL
    flags = ndimage.binary_closing(np.concatenate([flags, flags, flags]), iterations=3)[len(flags):2 * len(flags)]
    if flags.all() or not flags.any():
        return None
    gap_first, gap = max(_runs(~flags), key=lambda r: r[1])
    first, length = (gap_first + gap) % len(flags), len(flags) - gap
    return (first, length) if MIN_CONTACT_DEG <= length <= MAX_CONTACT_DEG else None


def _touching_regions(regions: np.ndarray, count: int, band: tuple[np.ndarray, np.ndarray]
                      ) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Each labelled region with its contact arc; a region without a plausible one is peeled first.

    Why peel: a thin bright ring (pericardial fat) around the heart that touches the RV pool joins them
    into one region touching the LV all around, which no RV does. Opening the region by 1, then 2
    pixels removes structures that thin; each core left is grown back by as much inside the region.
    """
    out = []
    for label in range(1, count + 1):
        region = regions == label
        arc = _contact_arc(region, band)
        if arc is not None:
            out.append((region, arc))
            continue
        for depth in (1, 2):
            cores, n = ndimage.label(ndimage.binary_opening(region, iterations=depth))
            pieces = [ndimage.binary_dilation(cores == i, iterations=depth) & region for i in range(1, n + 1)]
            touching = [(piece, arc) for piece in pieces if (arc := _contact_arc(piece, band)) is not None]
            if touching:
                out += touching
                break
    return out


def _circular_median(angles: list[float]) -> float:
    """The angle with the least summed angular distance to ``angles`` (robust to outliers).

    Where a range of angles ties (an even count), the middle of that range, as for a linear median.
    """
    cost = np.array([sum(angle_error_deg(a, b) for b in angles) for a in ANGLES])
    return _circular_mean([float(a) for a in ANGLES[cost <= cost.min() + 1e-9]])


def _choose_along_stack(candidates: list[list[_Candidate]]) -> list[tuple[float, int] | None]:
    """Per slice the best candidate, unless it disagrees with its neighbours and another one agrees.

    Why: the insertion point moves slowly from slice to slice (the labelled real hearts: 0-20 degrees
    per slice in the mid ventricle), while a brighter distractor (fat, an atrium) comes and goes. A
    slice whose best candidate lies more than ``STACK_TOLERANCE_DEG`` from the circular median of its
    neighbours' choices (``STACK_WINDOW`` slices either side, two at least) is decided again, each
    candidate's score now weighted by exp(-(distance / STACK_TOLERANCE_DEG)^2): a much weaker region
    that agrees does not replace a strong one just outside the tolerance, and a slice whose candidates
    all disagree is not emptied (borrowing from the neighbours is no safer than its own evidence).
    """
    chosen = [max(c, key=lambda x: x.score) if c else None for c in candidates]
    for _ in range(len(candidates)):
        changed = False
        for k, options in enumerate(candidates):
            near = [c.angle_deg for c in chosen[max(0, k - STACK_WINDOW):k] + chosen[k + 1:k + 1 + STACK_WINDOW]
                    if c is not None]
            best = max(options, key=lambda x: x.score) if options else None
            if best is None or len(near) < 2:
                continue
            reference = _circular_median(near)
            if angle_error_deg(best.angle_deg, reference) <= STACK_TOLERANCE_DEG:
                pick = best
            else:
                pick = max(options, key=lambda x: x.score * np.exp(
                    -(angle_error_deg(x.angle_deg, reference) / STACK_TOLERANCE_DEG) ** 2))
            changed |= pick is not chosen[k]
            chosen[k] = pick
        if not changed:
            break
    return [None if c is None else (c.angle_deg, c.direction) for c in chosen]


def anchor_from_images(cine_ed: np.ndarray, myo: np.ndarray, affine: np.ndarray, spacing_mm: float,
                       motion: np.ndarray | None = None) -> Anchor:
    """Anterior RV insertion per slice from the ED cine: where the RV blood pool meets the LV.

    ``cine_ed`` (Z, H, W) intensities (bright blood); ``myo`` (Z, H, W) myocardium (infarct included);
    ``motion`` (Z, H, W), optional: the cine's temporal standard deviation. Real slices show several
    bright regions beside the LV (epicardial fat, atria, vessels): per slice the RV is the candidate
    region with the largest area times motion (blood beats, fat does not) times a soft prior toward
    where the RV lies, in patients and in this stack (``_rv_prior``, floored at ``PRIOR_FLOOR`` so that
    a heart turned in the chest is still found) (``_rv_regions``), checked against the neighbouring
    slices (``_choose_along_stack``).
    """
    has_myo = [bool(m.any()) for m in myo]
    apex_view = viewed_from_apex(affine, myo)
    regions = [_rv_regions(cine_ed[k], myo[k], None if motion is None else motion[k], spacing_mm) if has_myo[k] else []
               for k in range(myo.shape[0])]
    prior = _rv_prior(affine, regions)
    candidates = [_candidates(r, apex_view, prior) for r in regions]
    return _finish("rv_images", _choose_along_stack(candidates), has_myo)


def anchor_from_labels(rv: np.ndarray, myo: np.ndarray, affine: np.ndarray, spacing_mm: float,
                       method: str = "rv_labels") -> Anchor:
    """Anterior RV insertion per slice from an RV mask on the same grid: labels (ACDC, M&Ms), or the RV a
    segmentation model found (``method`` ``rv_model``)."""
    per_slice: list[tuple[float, int] | None] = []
    has_myo = [bool(m.any()) for m in myo]
    apex_view = viewed_from_apex(affine, myo)
    for k in range(myo.shape[0]):
        if not has_myo[k] or not rv[k].any():
            per_slice.append(None)
            continue
        profile = _band_fill(rv[k], _band_points(myo[k], spacing_mm))
        per_slice.append(_insertion_from_flags(profile > BAND_FILL, apex_view, strength=profile))
    return _finish(method, per_slice, has_myo)


def anchor_summary(anchor: Anchor) -> dict:
    """What a reader needs to know about the numbering, for every output that shows segments.

    ``method``: ``rv_insertion`` (numbered from the anterior RV insertion found in the images or the RV
    labels) or ``fixed_angle`` (the crop grid's fixed angle: segment numbers may not match anatomy);
    ``source``: the ``Anchor.method``; ``why``: on which slices it was found, or why it fell back.
    """
    with_myo = [k for k, a in enumerate(anchor.angles_deg) if a is not None]
    found = [k for k in with_myo if anchor.found[k]]
    if anchor.method == "fixed":
        return {"method": "fixed_angle", "source": anchor.method,
                "why": anchor.warning or "no RV insertion point found on any slice"}
    why = f"RV insertion found on {len(found)} of {len(with_myo)} slices with myocardium"
    if len(found) < len(with_myo):
        why += "; the others use the nearest of those"
    return {"method": "rv_insertion", "source": anchor.method, "why": why}


def segment_map(reference_myo: np.ndarray, anchor: Anchor) -> np.ndarray:
    """AHA segment id (1..16, 0 = none) per pixel, numbered from each slice's anterior insertion point.

    Basal/mid: 1 anterior, 2 anteroseptal, 3 inferoseptal, 4 inferior, 5 inferolateral, 6 anterolateral
    (+6 for mid), 60 degrees each, segment 2 starting at the insertion point and running toward the
    septum. Apical: 13 anterior, 14 septal, 15 inferior, 16 lateral, 90 degrees each, the septal one
    centred on the septum (SEPTUM_SPAN_DEG / 2 from the insertion point). A ``fixed`` anchor gives
    exactly ``metrics.aha_segment_map``.
    """
    if anchor.method == "fixed":
        return metrics.aha_segment_map(reference_myo)
    ref = np.asarray(reference_myo, bool)
    z, h, w = ref.shape
    out = np.zeros((z, h, w), dtype=np.int16)
    levels = metrics.level_of_slices(ref)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    for k, level in enumerate(levels):
        if level is None or anchor.angles_deg[k] is None:
            continue
        cr, cc = _centroid(ref[k])
        angle = np.degrees(np.arctan2(-(rows - cr), cols - cc))
        rho = (anchor.direction * (angle - float(anchor.angles_deg[k]))) % 360.0
        if level == "apical":
            out[k] = 13 + ((np.floor((rho - (SEPTUM_SPAN_DEG / 2 - 45.0)) % 360.0 / 90.0).astype(np.int16) + 1) % 4)
        else:
            first = 1 if level == "basal" else 7
            out[k] = first + ((np.floor(rho / 60.0).astype(np.int16) + 1) % 6)
    return out


def angle_error_deg(a: float, b: float) -> float:
    d = abs((a - b) % 360.0)
    return min(d, 360.0 - d)
