"""Label-free LV localisation on a raw 4D cine, that checks what it found.

Why not only the motion map: the temporal standard deviation peaks wherever the image changes over the
cycle, which on real cines is the LV and RV blood pools *and* their borders with lung and liver; its
smoothed maximum landed 5-18 mm from the labelled LV centre on real hearts. What identifies the LV in
a short-axis cine is a bright, round blood pool that changes size over the cycle, wrapped in a darker
ring of myocardium, at about the same place on consecutive slices. So:

1. per slice, the blood pool at its largest (the maximum over frames, ~ED) is thresholded at each of
   ``THRESHOLD_FRACTIONS`` (five levels, 0.25-0.65 of the way from the slice's dark to its bright tissue
   near the image centre); the connected pieces, holes (papillary muscles) filled, are the candidates;
2. a candidate is *rejected* unless it is round (minor/major axis >= ``MIN_AXIS_RATIO``, solidity >=
   ``MIN_SOLIDITY``), of a cavity's size (``DIAMETER_MM``), changes over the cycle (moving border), and
   is ringed by darker tissue (>= ``MIN_RING`` of the pixels ``RING_MM`` outside it);
3. accepted candidates are chained across slices (a pool links to one within ``LINK_MM`` on the one or
   two slices before it); the chain with the most evidence (summed score) is the LV;
4. each member pool is grown into its cavity (``_cavity``: up to ``GROW_MM`` into tissue brighter than a
   level between its blood and its ring's myocardium; kept only while still round and ringed), because the
   threshold that isolates a round pool often keeps only the cavity's brightest part; the LV centre is the
   area-weighted mean of the cavities' centres, and its extent (for sizing the crop) the farthest pool
   pixel from that centre. Slices the chain skipped (a breath-hold moved the LV beyond a link's reach, a
   basal run past a gap) add the pool that overlaps the chain's (``_skipped``): to the extent while it reaches at
   most ``JUMP_MM`` beyond the chain's pools (``_extent``), to the centre between the chain's first and last
   slice (``_between_ends``).

When no candidate passes, the old motion-map peak is used and the method is named
``temporal_std_fallback`` with the reason, so outputs can say that the crop was not checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DIAMETER_MM = (14.0, 95.0)  # blood pool at ~ED: an apical slice's to a dilated base's
MIN_AXIS_RATIO = 0.45
MIN_SOLIDITY = 0.85
SMOOTH_MM = 3.0  # closing radius: trabeculae and papillary muscles notch the pool's border
MAX_FILLED = 0.25  # share of a pool that filling and closing may add (papillary muscles, trabeculae)
RING_MM = (2.0, 6.0)  # where the myocardium lies outside the blood pool
MIN_RING = 0.6  # share of that band darker than the threshold: the RV touches the LV on one side only
MIN_MOTION = 0.15  # border motion relative to the slice's strongest, below which a pool does not beat
LINK_MM = 12.0  # pools on other slices within this distance support a candidate
JUMP_MM = 28.0  # the farthest the LV pool may move between neighbouring slices (breath-holds, oblique axis)
MIN_SLICES = 3  # slices the LV must be found on (at most half the stack's): a 2-slice chain on an 11-slice
# stack was the stomach on a real cine whose LV passed no check; the named fallback is the honest answer there
THRESHOLD_FRACTIONS = (0.25, 0.35, 0.45, 0.55, 0.65)  # of the way from dark (20th percentile) to bright (99th) tissue;
# the 0.25 level for cavities dimmer than bright fat beside them (real patient047, 006: basal slices unchained)
WALL_MM = 10.0  # LV wall added to a pool's radius when weighting slices (and sizing the crop)
CENTRE_WEIGHT_FRACTION = 0.35  # image-centre prior: a Gaussian of this fraction of the field of view
GROW_MM = 8.0  # how far beyond the bright pool the cavity may reach (slow-flow blood, trabeculae at its edge)
CAVITY_LEVEL = 0.35  # of the way from the ring's dark tissue to the pool's median blood: the cavity's edge
RING_DARK_PERCENTILE = 30.0  # the ring's myocardium level (the band also holds RV blood and fat, brighter)


@dataclass(frozen=True)
class Candidate:
    """One accepted blood pool on one slice (cine voxel coordinates)."""

    slice: int
    center: tuple[float, float]
    area_px: int
    score: float
    extent_px: np.ndarray  # (n, 2) pixel coordinates of the pool (for the crop's extent)
    curve: np.ndarray  # mean intensity of the pool per frame, centred and scaled (its beat's phase)


@dataclass(frozen=True)
class LvLocation:
    """Where the LV is in a cine, and how that was decided.

    ``center``: voxel coordinates along cine axes 0, 1; ``radius_mm``: the farthest blood-pool pixel of
    the LV from that centre, on the chain's slices and those it skipped (None when unknown); ``method``:
    ``blood_pool`` (checked candidate) or ``temporal_std_fallback``; ``why``: the reason for a fallback;
    ``slices``: slices the LV was found on (the chain's).
    """

    center: tuple[float, float]
    radius_mm: float | None
    method: str
    why: str | None = None
    slices: tuple[int, ...] = ()


def _thresholds(image: np.ndarray, weight: np.ndarray) -> list[float]:
    """Levels between the dark (20th percentile) and bright (99th) tissue near the image centre.

    Several, not one: no single level separates the blood pool from the myocardium on every scanner
    and slice (too low merges the LV with the RV, too high keeps only the brightest core); each level's
    pools compete, and the roundest, best-ringed one wins. The lowest, a quarter of the way, is for slices
    where bright fat sets the 99th percentile and blood slowed by trabeculae stays below a third of the way
    up: no pool of the LV passed there, and the chain ran on the other slices only (real patient047: 6.2 mm off).
    """
    lo, hi = np.percentile(image[weight > 0.5], (20.0, 99.0))
    return [float(lo + f * (hi - lo)) for f in THRESHOLD_FRACTIONS]


def _centre_weight(shape: tuple[int, int]) -> np.ndarray:
    nx, ny = shape
    x = (np.arange(nx) - (nx - 1) / 2) / (CENTRE_WEIGHT_FRACTION * nx)
    y = (np.arange(ny) - (ny - 1) / 2) / (CENTRE_WEIGHT_FRACTION * ny)
    return np.exp(-0.5 * (x[:, None] ** 2 + y[None, :] ** 2))


def _smooth(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """The pool with its holes (papillary muscles) filled and its border's trabecular notches closed."""
    r = np.ceil(SMOOTH_MM / np.asarray(spacing)).astype(int)
    yy, xx = np.mgrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1]
    disk = (yy * spacing[0]) ** 2 + (xx * spacing[1]) ** 2 <= SMOOTH_MM ** 2
    padded = np.pad(mask, ((r[0], r[0]), (r[1], r[1])))
    closed = ndimage.binary_closing(padded, structure=disk)[r[0]:r[0] + mask.shape[0], r[1]:r[1] + mask.shape[1]]
    return ndimage.binary_fill_holes(closed | mask)


def _embed(mask: np.ndarray, box: tuple[slice, slice], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[box] = mask
    return out


def _shape_ok(mask: np.ndarray, spacing: tuple[float, float]) -> float | None:
    """Roundness in (0, 1] of a filled pool, or None when it is not a cavity's shape or size."""
    idx = np.argwhere(mask) * np.asarray(spacing)
    area = len(idx) * spacing[0] * spacing[1]
    diameter = 2.0 * np.sqrt(area / np.pi)
    if not DIAMETER_MM[0] <= diameter <= DIAMETER_MM[1]:
        return None
    evals = np.linalg.eigvalsh(np.cov(idx.T)) if len(idx) > 2 else np.zeros(2)
    ratio = float(np.sqrt(max(evals[0], 0.0) / max(evals[1], 1e-9)))
    hull_area = _hull_area(idx)
    solidity = area / max(hull_area, area)
    if ratio < MIN_AXIS_RATIO or solidity < MIN_SOLIDITY:
        return None
    return ratio * solidity


def _hull_area(points: np.ndarray) -> float:
    from scipy.spatial import ConvexHull, QhullError

    try:
        return float(ConvexHull(points).volume)
    except (QhullError, ValueError):
        return 0.0


def _ring_share(image: np.ndarray, mask: np.ndarray, threshold: float, spacing: tuple[float, float]) -> float:
    """Share of the band ``RING_MM`` outside the pool that is darker than the blood threshold."""
    dist = ndimage.distance_transform_edt(~mask, sampling=spacing)
    band = (dist >= RING_MM[0]) & (dist <= RING_MM[1])
    return float((image[band] < threshold).mean()) if band.any() else 0.0


def _curve(cine_k: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = cine_k[mask].mean(axis=0)
    values = values - values.mean()
    return values / (np.linalg.norm(values) or 1.0)


def _peak(cine_k: np.ndarray, spacing: tuple[float, float], weight: np.ndarray) -> np.ndarray:
    """The slice's frame with the most blood in view (~ED), smoothed at 1 mm: where pools are thresholded."""
    fullest = int(np.argmax((cine_k * weight[:, :, None]).sum(axis=(0, 1))))
    return ndimage.gaussian_filter(cine_k[:, :, fullest], sigma=(1.0 / spacing[0], 1.0 / spacing[1]))


def _slice_candidates(k: int, cine_k: np.ndarray, spacing: tuple[float, float], weight: np.ndarray) -> list[Candidate]:
    """Accepted blood pools of one slice (``cine_k``: X x Y x T)."""
    peak = _peak(cine_k, spacing, weight)
    motion = ndimage.gaussian_filter(cine_k.std(axis=2), sigma=(2.0 / spacing[0], 2.0 / spacing[1]))
    top_motion = float(np.percentile(motion * weight, 99.5)) or 1.0
    out: list[Candidate] = []
    for threshold in _thresholds(peak, weight):
        out += _pools(k, cine_k, peak, motion / top_motion, threshold, spacing, weight)
    return out


def _pools(k: int, cine_k: np.ndarray, peak: np.ndarray, motion: np.ndarray, threshold: float, spacing: tuple[float, float],
           weight: np.ndarray) -> list[Candidate]:
    """The pools brighter than ``threshold`` that pass every check, scored."""
    pieces, _ = ndimage.label(peak > threshold)
    out = []
    for label, box in enumerate(ndimage.find_objects(pieces), start=1):
        if box is None:
            continue
        bright = pieces[box] == label
        filled = _smooth(bright, spacing)
        if 1.0 - bright.sum() / filled.sum() > MAX_FILLED:
            continue  # a ring of tissue inside: two pools merged around the septum, not one cavity
        mask = _embed(filled, box, pieces.shape)
        roundness = _shape_ok(mask, spacing)
        if roundness is None:
            continue
        ring = _ring_share(peak, mask, threshold, spacing)
        border = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask, iterations=2)
        beat = float(motion[border].mean())
        if ring < MIN_RING or beat < MIN_MOTION:
            continue
        ci, cj = ndimage.center_of_mass(mask)
        centre_prior = float(weight[round(ci), round(cj)])
        score = roundness * ring * beat * centre_prior
        out.append(Candidate(slice=k, center=(float(ci), float(cj)), area_px=int(mask.sum()), score=float(score),
                             extent_px=np.argwhere(mask), curve=_curve(cine_k, mask)))
    return out


def _cavity(peak: np.ndarray, c: Candidate, spacing: tuple[float, float]) -> np.ndarray:
    """The cavity around an accepted pool: the pool grown, up to ``GROW_MM``, into tissue brighter than a
    level between the pool's blood and its ring's myocardium, holes filled.

    Why: the level that makes the pool round and ringed often keeps only the cavity's brightest part
    (slow-flowing blood and trabeculae darken the rest), whose centre is then millimetres off the LV's.
    The grown cavity replaces the pool only while it is still round and ringed like the pool was.
    """
    pool = np.zeros(peak.shape, dtype=bool)
    pool[tuple(c.extent_px.T)] = True
    dist = ndimage.distance_transform_edt(~pool, sampling=spacing)
    band = (dist >= RING_MM[0]) & (dist <= RING_MM[1])
    if not band.any():
        return pool
    dark, blood = float(np.percentile(peak[band], RING_DARK_PERCENTILE)), float(np.median(peak[pool]))
    level = dark + CAVITY_LEVEL * (blood - dark)
    pieces, _ = ndimage.label(((peak > level) & (dist <= GROW_MM)) | pool)
    grown = _smooth(np.isin(pieces, np.unique(pieces[pool])), spacing)
    if _shape_ok(grown, spacing) is None or _ring_share(peak, grown, level, spacing) < MIN_RING:
        return pool
    return grown


def _near(c: Candidate, centre: tuple[float, float], spacing: tuple[float, float]) -> float:
    return float(np.hypot((c.center[0] - centre[0]) * spacing[0], (c.center[1] - centre[1]) * spacing[1]))


def _in_phase(cands: list[Candidate], chain: list[Candidate]) -> list[Candidate]:
    """The pools that brighten and darken with ``chain`` (its score-weighted beat), not against it."""
    beat = np.sum([c.score * c.curve for c in chain], axis=0)
    return [c for c in cands if float(c.curve @ beat) > 0]


def _best_chain(cands: list[Candidate], spacing: tuple[float, float]) -> list[Candidate]:
    """At most one pool per slice, each linked to one on the one or two slices before it, with the
    largest summed score. A link longer than ``LINK_MM`` counts its pool's score less (a Gaussian
    beyond it), and none is longer than ``JUMP_MM``: neighbouring slices are separate breath-holds."""
    order = sorted(cands, key=lambda c: c.slice)
    total = [c.score for c in order]
    before: list[int | None] = [None] * len(order)
    for i, c in enumerate(order):
        for j in range(i):
            o = order[j]
            gap, distance = c.slice - o.slice, _near(o, c.center, spacing)
            if not 0 < gap <= 2 or distance > JUMP_MM:
                continue
            gain = c.score * float(np.exp(-0.5 * (max(0.0, distance - LINK_MM) / LINK_MM) ** 2))
            if total[j] + gain > total[i]:
                total[i], before[i] = total[j] + gain, j
    end: int | None = int(np.argmax(total))
    chain = []
    while end is not None:
        chain.append(order[end])
        end = before[end]
    return chain[::-1]


def _track(cands: list[Candidate], spacing: tuple[float, float]) -> list[Candidate]:
    """The LV: the chain of pools with the most evidence along the stack.

    Why a chain, not a consensus position: the LV is the one round, ringed, beating pool that runs
    through most of the stack, drifting between slices (separate breath-holds, an oblique axis); a
    great vessel or an atrium can outscore it on the two or three basal slices it appears on, and a
    median over the slices' winners then lands between the two (51-64 mm off on real hearts). Pools
    that brighten when the first chain darkens (an atrium filling while the ventricle empties) are
    dropped and the chain is found again among the rest; then pools with no chain member near them on
    the next slices are dropped (an isolated jump is another structure, not the LV drifting).
    """
    first = _best_chain(cands, spacing)
    in_phase = _in_phase(cands, first)
    if not in_phase:
        return []
    chain = _best_chain(in_phase, spacing)
    return [c for c in chain if _supported(c, chain, spacing)]


def _radius_mm(c: Candidate, spacing: tuple[float, float]) -> float:
    """The radius of a disc of the pool's area."""
    return float(np.sqrt(c.area_px * spacing[0] * spacing[1] / np.pi))


def _same_cavity(a: Candidate, b: Candidate, spacing: tuple[float, float]) -> bool:
    """Whether one pool's centre lies inside the other (the same cavity, shifted by a breath-hold)."""
    return _near(a, b.center, spacing) < max(_radius_mm(a, spacing), _radius_mm(b, spacing))


def _overlaps(c: Candidate, chain: list[Candidate], spacing: tuple[float, float]) -> bool:
    """Whether ``c`` is the same cavity as a chain pool on the chain slice nearest to its own."""
    gap = min(abs(o.slice - c.slice) for o in chain)
    return any(abs(o.slice - c.slice) == gap and _same_cavity(o, c, spacing) for o in chain)


def _skipped(cands: list[Candidate], chain: list[Candidate], spacing: tuple[float, float]) -> list[Candidate]:
    """The LV's pool on slices the chain has no member on: for the crop's extent, and between the chain's
    ends for the centre too (``_between_ends``).

    Why: the chain skips slices where the LV moved more than a link allows (a breath-hold 25-35 mm off on
    real hearts) and stops where no pool passes the checks for more than two slices (a basal segment on a
    thick-walled heart), and those are often the slices where the heart reaches farthest from the centre:
    3 of the 4 development hearts whose crop cut myocardium. On each such slice the best in-phase pool that
    overlaps the chain pool nearest in slice number (one's centre inside the other) is taken. Such a pool may
    be another structure that overlaps the LV's and reaches past its wall: the crop is then larger than it
    needs to be, a coarser grid, not a cut heart (docs/QUALITY.md: one held-out crop doubled so).
    """
    taken = {c.slice for c in chain}
    best: dict[int, Candidate] = {}
    for c in _in_phase(cands, chain):
        if c.slice in taken or not _overlaps(c, chain, spacing):
            continue
        if c.slice not in best or c.score > best[c.slice].score:
            best[c.slice] = c
    return list(best.values())


def _between_ends(pools: list[Candidate], chain: list[Candidate]) -> list[Candidate]:
    """The pools on slices from the chain's first to its last: the chain and the slices it skipped in between.

    Why these count for the centre: a skipped slice between two chain slices whose pool overlaps the chain's
    is the LV that a breath-hold moved, and the labels' centre (all slices) includes it (patient014: 8.1 mm
    off without its two moved slices, 1.9 with them). The skipped runs beyond the chain's ends size the
    crop only: counting them for the centre too moved M&Ms L8N7Z0's from 4.2 to 5.1 mm (its basal run lies
    11-16 mm from the centre found) and fixed no other development heart.
    """
    first, last = min(c.slice for c in chain), max(c.slice for c in chain)
    return [c for c in pools if first <= c.slice <= last]


def _reach(c: Candidate, centre: tuple[float, float], spacing: tuple[float, float]) -> float:
    """The farthest pixel of a pool from ``centre``, in mm."""
    pts = c.extent_px.astype(float)
    return float(np.max(np.hypot((pts[:, 0] - centre[0]) * spacing[0], (pts[:, 1] - centre[1]) * spacing[1])))


def _extent(chain: list[Candidate], skipped: list[Candidate], centre: tuple[float, float],
            spacing: tuple[float, float]) -> float:
    """The LV's radius for the crop: the farthest pool pixel from ``centre`` on the chain's slices and on those it
    skipped, a skipped slice's pool counting only while it reaches at most ``JUMP_MM`` beyond the chain's.

    Why the cap: a skipped slice's LV is the chain's LV moved by a breath-hold or grown toward the base, which on
    the development hearts reached 10-19 mm beyond the chain's farthest pool (patient014, 026, M&Ms L8N7Z0). A
    pool that overlaps the LV's but reaches farther than a link's length beyond it is the LV merged with
    another chamber on an end slice; counted, it doubled one held-out crop (patient096, 102 -> 198 mm) for no
    myocardium. Such a pool still counts for the centre when it lies between chain slices (``_between_ends``).
    """
    reach = max(_reach(c, centre, spacing) for c in chain)
    return max([reach] + [r for r in (_reach(c, centre, spacing) for c in skipped) if r <= reach + JUMP_MM])


def _supported(c: Candidate, chosen: list[Candidate], spacing: tuple[float, float]) -> bool:
    """Whether a pool on a nearby slice (<= 2 slices away) lies within ``LINK_MM``: an isolated jump is
    another structure (a merged blob, the outflow tract), not the LV drifting between breath-holds."""
    return any(0 < abs(o.slice - c.slice) <= 2 and _near(o, c.center, spacing) <= LINK_MM for o in chosen)


def locate_lv(cine: np.ndarray, spacing: tuple[float, float], fallback=None) -> LvLocation:
    """The LV of a 4D X x Y x Z x T cine (see the module docstring); ``fallback`` gives the old centre."""
    weight = _centre_weight(cine.shape[:2])
    cands = [c for k in range(cine.shape[2]) for c in _slice_candidates(k, cine[:, :, k], spacing, weight)]
    best = (_track(cands, spacing) if cine.shape[2] > 1 else [max(cands, key=lambda c: c.score)]) if cands else []
    needed = min(MIN_SLICES, max(1, -(-cine.shape[2] // 2)))
    if len(best) < needed:
        centre = fallback(cine, spacing) if fallback else ((cine.shape[0] - 1) / 2, (cine.shape[1] - 1) / 2)
        why = (f"no round, beating, ringed bright blood pool at the same place on {needed} slices or more"
               if cands else "no round, beating, ringed bright blood pool on any slice")
        return LvLocation(center=centre, radius_mm=None, method="temporal_std_fallback", why=why)
    skipped = _skipped(cands, best, spacing)
    ci, cj = _centre(cine, _between_ends(best + skipped, best), spacing, weight)
    radius = _extent(best, skipped, (ci, cj), spacing)
    return LvLocation(center=(ci, cj), radius_mm=radius, method="blood_pool",
                      slices=tuple(sorted(c.slice for c in best)))


def _centre(cine: np.ndarray, best: list[Candidate], spacing: tuple[float, float],
            weight: np.ndarray) -> tuple[float, float]:
    """Mean of the pools' cavity centres (``_cavity``), weighted like the LV's cross-section (cavity plus a
    wall), as the labels' centre of cavity + myocardium is."""
    cavities = [_cavity(_peak(cine[:, :, c.slice], spacing, weight), c, spacing) for c in best]
    radii = np.sqrt(np.array([m.sum() for m in cavities], dtype=float) * spacing[0] * spacing[1] / np.pi)
    centres = np.array([ndimage.center_of_mass(m) for m in cavities])
    areas = (radii + WALL_MM) ** 2
    return float(np.average(centres[:, 0], weights=areas)), float(np.average(centres[:, 1], weights=areas))


def describe(found: LvLocation) -> dict:
    """How the crop centre was found, for a report: method, why (a fallback's reason), slices, pool radius."""
    return {"method": found.method, "why": found.why, "slices": list(found.slices),
            "pool_radius_mm": None if found.radius_mm is None else round(found.radius_mm, 1)}
