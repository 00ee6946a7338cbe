"""Deterministic synthetic cardiac MRI: the embedded dataset the demo and the tests run on.

Why analytic: every image is rendered from closed-form geometry (LV ring, RV crescent, infarct
sector), so the labels match the pixels exactly in *both* spaces (cine pose and LGE pose) and
every stage can be scored against truth.

Model, per subject (all draws from ``numpy.random.default_rng([seed, index])``):

* short-axis stack base -> apex; the LV is a ring whose ED endocardial radius and wall thickness
  shrink toward the apex; a slightly elliptic cavity; an RV crescent on the patient's right;
* a cardiac cycle: contraction ``c(t)`` rises smoothly from 0 at ED to 1 at ES (~35-40 % of the
  cycle), falls during rapid filling and stays 0 during diastasis. Physiological numbers (published CMR
  figures for normal hearts; docs/QUALITY.md compares them with real images): ED wall 7-10 mm at the
  base, x0.8 toward the apex (~5.5-10 mm), ED endocardial radius
  21-27 mm; the wall thickens by ``tf`` (40-80 %, more toward the apex) times ``c`` and mostly
  inward: the epicardium moves in by only 2-4 mm (scaled by how much the sector thickens), the
  endocardium follows, so ED and ES myocardium overlap (mid-slice ED-vs-ES Dice ~0.5); an optional
  apex-vs-base twist;
* an infarct sector (angle, extent 40-120 deg, transmurality 0.3-1, a range of slices) whose scar
  layer barely thickens (tf < 0.08) while the viable outer layer still thickens, tethered to 70 %
  of normal: a transmural infarct is akinetic, a subendocardial one hypokinetic, as in patients
  (thickening falls with transmural extent), so the cine carries the depth of the scar; a 20 deg
  border zone outside it; optionally remodelled thinner; about one subject in three has none;
* cine contrast (bright blood, grey myocardium, textured body) and LGE contrast (nulled remote
  myocardium, bright scar, bright-ish blood) with Rician noise and a smooth bias field each;
* the LGE is the heart in diastasis (``c = 0``, the ED shape) at another breath-hold: an in-plane
  shift and rotation (``breath_hold_shift_mm`` / ``breath_hold_rotation_deg``), a through-plane
  offset up to ``lge_slice_offset`` of a slice and a small out-of-plane tilt about the heart centre,
  plus a small smooth in-plane elastic change, sampled on the LGE's own grid (own spacing, matrix,
  origin and a slightly different plane); LGE nulling, fat signal and noise from their ranges;
* ``vary: true``: each subject its own grid (slices, frames, spacing, FOV, slice thickness, LGE
  spacing) from the ``*_range`` fields of ``PhantomConfig`` (ranges documented there; a stack spans at
  most ``MAX_STACK_MM``), and the hearts and contrast real cines show besides normal ones: dilated and
  hypertrophied hearts (``_cavity_and_wall``), myocardium 0.14-0.36 of blood (``_cine_contrast``);
  ``cine_labels: false`` writes no ``cine_label.nii.gz``; ``rv_label: true`` marks the RV blood pool in
  the cine labels (code 5).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml

from mi_pipeline.config import PhantomConfig
from mi_pipeline.data.cache import RV_CODE

GENERATOR_VERSION = 6  # 2: infarct thickening falls with transmurality; 3: physiological wall and motion,
# ranges; 4: ``vary`` draws dilated and hypertrophied hearts, real-image contrast, stacks <= MAX_STACK_MM;
# 5: ``vary`` draws how far the RV wraps the septum and hearts far off the FOV centre (``_vary_anatomy``);
# 6: ``vary`` with ``papillary_muscles`` draws two in the LV cavity of the mid-ventricular slices
MARKER = ".phantom.json"
VIABLE_TETHERING = 0.7  # thickening of viable myocardium over a scar, as a share of remote
INTENSITY_SCALE = 1000.0  # stored as int16 counts, like scanner magnitude images
MAX_STACK_MM = 130.0  # ``vary``: a drawn stack spans base to apex, so no more slices than fit a long LV


def subject_id(index: int) -> str:
    return f"phantom_{index + 1:03d}"


@dataclass(frozen=True)
class PhantomSubject:
    """One rendered subject; arrays in NIfTI voxel order (X, Y, Z[, T])."""

    id: str
    cine: np.ndarray  # int16 (X, Y, Z, T)
    cine_affine: np.ndarray
    cine_label: np.ndarray  # uint8 (X, Y, Z, T), 0..3 (and 5, the RV, with ``rv_label``)
    lge: np.ndarray  # int16 (X', Y', Z')
    lge_affine: np.ndarray
    lge_label: np.ndarray  # uint8 (X', Y', Z'), 0..3
    frame_ms: float
    info: dict[str, Any]


# --------------------------------------------------------------------------------------------
# Random anatomy
# --------------------------------------------------------------------------------------------


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix from angles in degrees (x, then y, then z)."""
    ax, ay, az = np.radians([rx, ry, rz])
    mx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    my = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    mz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return mz @ my @ mx


def _axis_rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation by ``degrees`` about the unit vector ``axis`` (Rodrigues)."""
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(degrees)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def contraction(phase: np.ndarray | float, es_phase: float) -> np.ndarray:
    """Smooth cyclic contraction in [0, 1]: 0 at ED (phase 0), 1 at ES, 0 again from mid-diastole."""
    t = np.asarray(phase, dtype=np.float64) % 1.0
    systole = 0.5 * (1 - np.cos(np.pi * np.clip(t / es_phase, 0, 1)))
    u = np.clip((t - es_phase) / (0.6 * (1 - es_phase)), 0, 1)
    diastole = 0.5 * (1 + np.cos(np.pi * u))
    return np.where(t <= es_phase, systole, diastole)


@dataclass(frozen=True)
class _Heart:
    """Closed-form heart in the cine 'physical' frame: (x, y) mm in-plane, k = slice index."""

    slices: int
    cx: float
    cy: float
    tilt: tuple[float, float]  # centre drift base -> apex (mm)
    r0: float  # ED endocardial radius at the base (mm)
    w0: float  # ED wall thickness at the base (mm)
    ell: float
    ell_angle: float
    tf: float  # normal fractional systolic thickening at the base
    epi_in: float  # normal inward epicardial motion ED -> ES at the base (mm)
    twist: float  # radians, apex minus base at ES
    infarct: bool
    inf_angle: float
    inf_extent: float  # radians
    inf_trans: float  # transmurality (fraction of the wall from the endocardium)
    inf_k: tuple[int, int]  # first and last slice of the infarct
    inf_tf: float
    remodel: float  # fractional thinning of the infarct wall at ED
    rv_angle: float
    rv_scale: float
    rv_width: float = 1.0  # the RV's extent along the LV (x its 34 mm half-axis): how far it wraps the septum
    rv_inset_mm: float | None = None  # the RV ellipse's centre this far inside the epicardium (None: at 0.8 of
    # the epicardial radius, the default subject's); deeper = more contact, a shallower RV cavity
    papillary_mm: float = 0.0  # radius of the two papillary muscles at ED (0: none, the default subject)
    papillary_deg: float = 45.0  # each this far either side of the point opposite the RV

    def geometry(self, x: np.ndarray, y: np.ndarray, k: np.ndarray) -> dict[str, np.ndarray]:
        """What does not change over the cycle (computed once per grid)."""
        z = self.slices
        s = np.clip(k / max(z - 1, 1), 0.0, 1.0)
        dx = x - (self.cx + self.tilt[0] * s)
        dy = y - (self.cy + self.tilt[1] * s)
        return {"k": k, "s": s, "in_z": (k >= -0.5) & (k <= z - 0.5), "dx": dx, "dy": dy,
                "r": np.hypot(dx, dy), "angle": np.arctan2(dy, dx)}

    def fields(self, geom: dict[str, np.ndarray], c: float, h: float) -> dict[str, np.ndarray]:
        """Soft memberships (partial volume over ``h`` mm) and hard labels at contraction ``c``."""
        k, s, in_z, dx, dy, r = geom["k"], geom["s"], geom["in_z"], geom["dx"], geom["dy"], geom["r"]
        theta = geom["angle"] - self.twist * (s - 0.4) * c  # material angle

        if self.infarct:
            in_k = (k >= self.inf_k[0] - 0.5) & (k <= self.inf_k[1] + 0.5)
            delta = np.abs(_wrap(theta - self.inf_angle)) - self.inf_extent / 2
            border = float(np.radians(20.0))
            g = np.where(delta <= 0, 1.0, 0.5 * (1 + np.cos(np.pi * np.clip(delta / border, 0, 1))))
            g = g * in_k
        else:
            in_k = np.zeros_like(in_z)
            delta = np.full_like(r, np.inf)
            g = np.zeros_like(r)

        shape = np.sqrt(1 - (0.8 * s) ** 2)
        ri_ed = self.r0 * shape * (1 + self.ell * np.cos(2 * (theta - self.ell_angle)))
        w_ed = self.w0 * (1 - 0.2 * s) * (1 - self.remodel * g)
        tf_remote = self.tf * (1 + 0.25 * s)
        tf_sector = self.inf_tf * self.inf_trans + VIABLE_TETHERING * tf_remote * (1 - self.inf_trans)
        tf = tf_remote * (1 - g) + tf_sector * g
        # thickening is mostly inward: the epicardium moves in by epi_in (2-4 mm normal, scaled by how
        # much this sector thickens), the wall thickens by tf, the endocardium follows. Myocardial area
        # in a slice grows in systole (long-axis shortening brings tissue into the plane).
        w = w_ed * (1 + tf * c)
        re = ri_ed + w_ed - self.epi_in * shape * (tf / tf_remote) * c
        ri = np.maximum(re - w, 1.5)
        re = ri + w
        ri_inf = ri + self.inf_trans * w

        def soft(dist: np.ndarray) -> np.ndarray:
            return np.clip(dist / h + 0.5, 0.0, 1.0)

        f_cav = soft(ri - r) * in_z
        if self.papillary_mm > 0:  # dark muscle in the bright cavity, labelled cavity as expert contours draw it
            f_cav = f_cav * (1 - self._papillary(theta, r, ri, s, c, soft))
        f_epi = soft(re - r) * in_z
        f_inf = np.zeros_like(r)
        if self.infarct:
            f_inf = soft(ri_inf - r) * soft(-delta * np.maximum(r, 1e-3)) * in_k * in_z

        # RV: an ellipse beside the LV, outside the LV epicardium; 2.5 mm free wall
        scale = self.rv_scale * (1 - 0.45 * s) * (1 - 0.2 * c)
        dist0 = (self.r0 + self.w0) * 0.8 if self.rv_inset_mm is None else self.r0 + self.w0 - self.rv_inset_mm
        cos_rv, sin_rv = math.cos(self.rv_angle), math.sin(self.rv_angle)
        along = dx * cos_rv + dy * sin_rv - dist0
        perp = -dx * sin_rv + dy * cos_rv
        a, b = 20.0 * scale, 34.0 * scale * self.rv_width
        q_in = np.hypot(along / a, perp / b)
        q_out = np.hypot(along / (a + 2.5), perp / (b + 2.5))
        f_rvb = soft((1 - q_in) * np.sqrt(a * b)) * in_z
        f_rvo = np.maximum(soft((1 - q_out) * np.sqrt((a + 2.5) * (b + 2.5))) * in_z, f_rvb)

        # epicardial fat (a thin bright band) and lung (dark) around the heart
        f_peri = soft(re + 2.5 - r) * in_z
        lx, ly = dx + 10 * cos_rv, dy + 10 * sin_rv
        f_lung = soft((1 - np.hypot(lx / 58.0, ly / 46.0)) * 50.0)

        label = np.zeros(r.shape, dtype=np.uint8)
        label[in_z & (r < re)] = 2
        label[in_z & (r < ri)] = 1
        if self.infarct:
            label[in_z & in_k & (r >= ri) & (r < re) & (r < ri_inf) & (delta <= 0)] = 3
        return {"cav": f_cav, "epi": f_epi, "inf": f_inf, "rvb": f_rvb, "rvo": f_rvo, "peri": f_peri,
                "lung": f_lung, "label": label}

    def _papillary(self, theta: np.ndarray, r: np.ndarray, ri: np.ndarray, s: np.ndarray, c: float,
                   soft: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Membership of the two papillary muscles: discs attached to the endocardium, opposite the RV
        (anterolateral and inferolateral), on the mid-ventricular slices (``s``, 0 at the base and 1 at the
        apex: full size for 0.25-0.7, none below 0.1 or above 0.85), following the wall's material angle and
        thickening in systole."""
        level = np.clip(np.minimum((s - 0.1) / 0.15, (0.85 - s) / 0.15), 0, 1)  # 0 at base and apex, 1 mid
        size = min(self.papillary_mm, 0.3 * self.r0) * (1 + 0.3 * c) * level
        out = np.zeros_like(r)
        for side in (1.0, -1.0):
            centre = self.rv_angle + math.pi + side * math.radians(self.papillary_deg)
            along = r - (ri - 0.8 * size)  # radial distance from the disc's centre
            across = r * _wrap(theta - centre)
            out = np.maximum(out, soft(size - np.hypot(along, across)) * (size > 0))
        return out


@dataclass(frozen=True)
class _Body:
    """Static textured body: an ellipse of soft tissue with a fat rim, air outside."""

    center: tuple[float, float]
    axes: tuple[float, float]
    waves: np.ndarray  # (n, 3) wave vectors (rad/mm)
    phases: np.ndarray
    amps: np.ndarray

    def fields(self, x: np.ndarray, y: np.ndarray, zmm: np.ndarray,
               h: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = np.hypot((x - self.center[0]) / self.axes[0], (y - self.center[1]) / self.axes[1])
        depth = (1 - q) * min(self.axes)  # ~ mm inside the body outline
        body = np.clip(depth / h + 0.5, 0, 1)
        fat = body * np.clip((9.0 - depth) / h + 0.5, 0, 1)
        tex = np.zeros_like(x)
        for (kx, ky, kz), ph, amp in zip(self.waves.tolist(), self.phases.tolist(), self.amps.tolist()):
            tex += amp * np.cos(kx * x + ky * y + kz * zmm + ph)
        return body, fat, tex


@dataclass(frozen=True)
class Grid:
    """A subject's cine grid: ``size`` x ``size`` pixels of ``spacing_mm``, ``slices`` of ``thickness_mm``."""

    size: int
    spacing_mm: float
    thickness_mm: float
    slices: int
    frames: int


@dataclass(frozen=True)
class ElasticChange:
    """The LGE's smooth in-plane elastic change: two sine terms per axis (amplitude mm, wave number, phase)."""

    amp: np.ndarray
    k: np.ndarray
    phase: np.ndarray


@dataclass(frozen=True)
class SubjectDraw:
    """Every random choice of one subject, drawn in a fixed order (see ``_draw``).

    ``rotation``/``origin``: the cine plane's direction cosines (with the scanner's flips) and origin;
    ``lge_*``: the LGE's own plane, origin, spacing and matrix; ``breath_hold``: the cine-to-LGE pose
    change as written to ``info.json``; ``cine_contrast``/``lge_contrast``: tissue signals (blood, myo,
    scar, tissue, fat, lung); ``noise``/``bias``: Rician noise level and bias-field coefficients, (cine, LGE).
    """

    heart: _Heart
    body: _Body
    grid: Grid
    rotation: np.ndarray
    origin: np.ndarray
    ed: int
    es_offset: int
    lge_rotation: np.ndarray
    lge_origin: np.ndarray
    lge_spacing_mm: float
    lge_size: int
    breath_hold: dict[str, Any]
    elastic: ElasticChange
    cine_contrast: dict[str, float]
    lge_contrast: dict[str, float]
    noise: tuple[float, float]
    bias: tuple[np.ndarray, np.ndarray]


def _cavity_and_wall(u: Callable[..., Any], vary: bool) -> dict[str, float]:
    """ED endocardial radius ``r0`` and wall ``w0`` at the base (mm), drawn together.

    Default: a normal heart (radius 21-27 mm, wall 7-10 mm). ``vary``: the shapes real short-axis
    stacks show as well (docs/QUALITY.md measures them): 60 % normal, 20 % dilated (radius 27-34.5 mm,
    a thin-ish wall 5-8.5 mm), 20 % hypertrophied (a small cavity, 21-26 mm, wall 10-20 mm). Drawn
    jointly because a large cavity with a thick wall, or a small one with a thin wall, is not what
    patients have; the wall is x0.8 toward the apex, so a base wall of 20 mm is ~17 mm over the stack.
    """
    if not vary:
        return {"r0": u(21, 27), "w0": u(7.0, 10.0)}
    kind = u()
    if kind < 0.6:
        return {"r0": u(21, 27), "w0": u(7.0, 10.0)}
    if kind < 0.8:
        return {"r0": u(27, 34.5), "w0": u(5.0, 8.5)}
    return {"r0": u(21, 26), "w0": u(10.0, 20.0)}


def _cine_contrast(u: Callable[..., Any], vary: bool) -> dict[str, float]:
    """Cine tissue signals relative to bright blood ~1 (blood drawn first, then the others in order).

    ``vary``: myocardium 0.14-0.36 of blood (blood / myocardium 2.8-7, as real bSSFP cines measure),
    not 0.25-0.35 absolute (blood / myocardium 2.5-4): a model that learned one contrast should not
    meet another first at a site.
    """
    blood = u(0.85, 1.0)
    myo = blood * u(0.14, 0.36) if vary else u(0.25, 0.35)
    return {"blood": blood, "myo": myo, "tissue": u(0.2, 0.3), "fat": u(0.6, 0.8), "lung": u(0.03, 0.06)}


def _vary_anatomy(params: PhantomConfig, index: int, fov_mm: float) -> tuple[tuple[float, float], dict[str, float]]:
    """``vary``: the RV's contact with the septum and the heart's place in the FOV, as real cines have them.

    Measured on expert labels (ACDC 001-050 and six M&Ms at ED, mid slices): the RV blood lies within
    4 mm of the epicardium along 64-127 degrees (5-95 %: 72-124), against 71-119 (77-111) drawn before;
    the LV centre lies 1-78 mm from the FOV centre (median 14, 95 % 29-59), against <= 11 mm. The heart
    moves off centre only as far as the FOV leaves room for it (85 mm of heart, RV and fat around its
    centre; none in a 170 mm FOV), skewed toward the centre. Drawn from a stream of their own, so every
    other draw of a subject is what it was. With ``papillary_muscles`` (version 6), two papillary muscles:
    on real mid slices at ED (ACDC 100, M&Ms 6) 15 % of the cavity (5-95 %: 7-26) is darker than halfway
    from myocardium to blood, its largest dark piece 6 mm in equivalent radius (3-9); two discs of
    3.5-8.5 mm (at most 0.3 of the cavity's radius) cover that. Returns the heart's extra (x, y) offset in
    mm and the RV's and papillary muscles' ``_Heart`` fields.
    """
    rng = np.random.default_rng([params.seed, index, 2])
    width, inset = rng.uniform(0.75, 1.45), rng.uniform(2.0, 10.0)  # the default's inset is 6-9 mm
    room = max(0.0, min(60.0, fov_mm / 2 - 85.0))
    radius, direction = room * rng.uniform() ** 1.5, rng.uniform(0, 2 * np.pi)
    offset = (float(radius * math.cos(direction)), float(radius * math.sin(direction)))
    papillary, spread = rng.uniform(3.5, 8.5), rng.uniform(30.0, 60.0)  # drawn last: the draws above are unchanged
    return offset, {"rv_width": float(width), "rv_inset_mm": float(inset),
                    "papillary_mm": float(papillary) if params.papillary_muscles else 0.0,
                    "papillary_deg": float(spread)}


def _draw(params: PhantomConfig, index: int) -> SubjectDraw:
    """All random draws of one subject, in a fixed order (so the bytes are stable for a seed)."""
    rng = np.random.default_rng([params.seed, index])
    u = rng.uniform
    n, sp, th, z, frames = params.size, params.spacing_mm, params.slice_thickness_mm, params.slices, params.frames
    if params.vary:  # this subject's own grid
        sp = round(u(*params.spacing_range_mm), 3)
        n = int(round(u(*params.fov_range_mm) / sp))
        th = round(u(*params.slice_thickness_range_mm), 2)
        z = min(int(rng.integers(params.slices_range[0], params.slices_range[1] + 1)),
                max(params.slices_range[0], int(MAX_STACK_MM // th)))
        frames = int(rng.integers(params.frames_range[0], params.frames_range[1] + 1))
    fov_c = (n - 1) / 2 * sp

    # cine plane: scanner-like flips plus a slight obliquity (slice axis stays voxel axis 2)
    flips = np.diag([rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0]), 1.0])
    rot = _rotation(u(-10, 10), u(-10, 10), u(-15, 15)) @ flips
    origin = np.array([u(-120, -60), u(-120, -60), u(-40, 0)])
    # RV lies toward world -x (patient right, RAS) whatever the grid flips are
    rv_world = rot.T @ np.array([-1.0, u(0.1, 0.5), 0.0])
    rv_angle = float(np.arctan2(rv_world[1], rv_world[0]) + np.radians(u(-12, 12)))

    infarct = bool(u() >= 1 / 3)
    length = int(rng.integers((z + 1) // 2, z + 1))  # infarcts span at least half the stack
    first = int(rng.integers(0, z - length + 1))
    last = first + length - 1
    cx, cy = fov_c + u(-params.heart_offset_mm, params.heart_offset_mm), fov_c + u(-params.heart_offset_mm,
                                                                                   params.heart_offset_mm)
    (dx, dy), rv_shape = _vary_anatomy(params, index, n * sp) if params.vary else ((0.0, 0.0), {})
    heart = _Heart(
        slices=z,
        cx=cx + dx,
        cy=cy + dy,
        tilt=(u(-4, 4), u(-4, 4)),
        **_cavity_and_wall(u, params.vary),
        ell=u(0.0, 0.08),
        ell_angle=u(0, np.pi),  # python floats keep the float32 arrays float32
        tf=u(0.4, 0.8),  # fractional systolic thickening (more toward the apex)
        epi_in=u(2.0, 4.0),
        twist=float(np.radians(u(-8, 8))),
        infarct=infarct,
        inf_angle=u(-np.pi, np.pi),
        inf_extent=float(np.radians(u(40, 120))),
        inf_trans=u(0.3, 1.0) if u() < 0.6 else 1.0,
        inf_k=(first, last),
        inf_tf=u(0.0, 0.08),
        remodel=u(0.1, 0.3) if (infarct and u() < 0.5) else 0.0,
        rv_angle=rv_angle,
        rv_scale=u(0.85, 1.1),
        **rv_shape,
    )
    body = _Body(
        center=(fov_c + u(-10, 10), fov_c + u(-5, 5)),
        axes=(max(n * sp * u(0.6, 0.75), 100.0), max(n * sp * u(0.5, 0.6), 80.0)),
        waves=rng.normal(size=(16, 3)) * (2 * np.pi / u(6, 30, size=16))[:, None] * np.array([1, 1, 0.3]),
        phases=rng.uniform(0, 2 * np.pi, 16),
        amps=rng.uniform(0.005, 0.02, 16),
    )
    ed = 0 if u() < 0.7 else int(rng.integers(1, frames))
    es_offset = int(round(u(0.35, 0.40) * frames))
    es_offset = min(max(es_offset, 1), frames - 1)

    # LGE: own grid (spacing, matrix, origin, slightly different plane), same stack of slices
    sp_l = round(u(*params.lge_spacing_range_mm), 3) if params.vary else round(sp * u(0.85, 1.15), 2)
    n_l = int(round(n * sp / sp_l))
    rot_l = _rotation(u(-3, 3), u(-3, 3), u(-3, 3)) @ rot
    zoom_c = np.diag([sp, sp, th])
    zoom_l = np.diag([sp_l, sp_l, th])
    centre_c = origin + rot @ zoom_c @ np.array([(n - 1) / 2, (n - 1) / 2, (z - 1) / 2])
    origin_l = centre_c - rot_l @ zoom_l @ np.array([(n_l - 1) / 2, (n_l - 1) / 2, (z - 1) / 2])
    origin_l = origin_l + rot_l @ np.array([u(-5, 5), u(-5, 5), 0.0])
    heart_world = origin + rot @ np.array([heart.cx, heart.cy, (z - 1) / 2 * th])
    # breath-hold: in-plane shift and rotation (magnitudes from the ranges, random direction/sign) in
    # the cine plane, a through-plane offset up to lge_slice_offset of a slice, a little out-of-plane tilt
    shift = u(*params.breath_hold_shift_mm)
    direction = u(0, 2 * np.pi)
    spin = u(*params.breath_hold_rotation_deg) * (1.0 if u() < 0.5 else -1.0)
    through = u(-params.lge_slice_offset, params.lge_slice_offset) * th
    move = rot @ np.array([shift * math.cos(direction), shift * math.sin(direction), through])
    tilt_axis = rot @ np.array([u(-2, 2), u(-2, 2), 0.0])
    breath_hold = {
        "rotation_deg": [round(float(tilt_axis[0]), 3), round(float(tilt_axis[1]), 3), 0.0],
        "in_plane_rotation_deg": round(float(spin), 3),
        "plane_normal": [round(float(v), 6) for v in rot[:, 2]],
        "translation_mm": [round(float(v), 3) for v in move],
        "center_mm": [round(float(v), 3) for v in heart_world],
    }
    elastic = ElasticChange(amp=u(0.4, 1.2, size=(2, 2)), k=2 * np.pi / u(60, 120, size=(2, 2)),
                            phase=u(0, 2 * np.pi, size=(2, 2)))
    return SubjectDraw(
        heart=heart, body=body, rotation=rot, origin=origin, ed=ed, es_offset=es_offset,
        lge_rotation=rot_l, lge_origin=origin_l, lge_spacing_mm=sp_l, lge_size=n_l, breath_hold=breath_hold,
        elastic=elastic,
        cine_contrast=_cine_contrast(u, params.vary),
        lge_contrast={"blood": u(0.5, 0.65), "myo": u(*params.lge_remote_signal), "scar": u(0.9, 1.0),
                      "tissue": u(0.18, 0.28), "fat": u(*params.lge_fat_signal), "lung": u(0.02, 0.04)},
        noise=(u(*params.noise_range), u(*params.noise_range)),
        grid=Grid(size=n, spacing_mm=sp, thickness_mm=th, slices=z, frames=frames),
        bias=(u(-0.15, 0.15, size=3), u(-0.15, 0.15, size=3)),
    )


def breath_hold_matrix(bh: dict[str, Any]) -> np.ndarray:
    """4x4 world transform taking a point of the heart in cine pose to its LGE pose."""
    centre = np.asarray(bh["center_mm"], dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = _rotation(*bh["rotation_deg"])
    if "in_plane_rotation_deg" in bh:  # about the cine slice normal
        m[:3, :3] = _axis_rotation(np.asarray(bh["plane_normal"]), bh["in_plane_rotation_deg"]) @ m[:3, :3]
    m[:3, 3] = centre + np.asarray(bh["translation_mm"]) - m[:3, :3] @ centre
    return m


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _compose(f: dict[str, np.ndarray], body: tuple[np.ndarray, ...], con: dict[str, float], lge: bool) -> np.ndarray:
    b, fat, tex = body
    background = b * (con["tissue"] + tex) + fat * (con["fat"] - con["tissue"]) + (1 - b) * 0.01
    background = f["lung"] * (con["lung"] + 0.3 * tex) + (1 - f["lung"]) * background
    background = f["peri"] * 0.8 * con["fat"] + (1 - f["peri"]) * background
    myo = con["myo"] + f["inf"] * (con["scar"] - con["myo"]) if lge else con["myo"]
    rv = f["rvb"] * con["blood"] + (f["rvo"] - f["rvb"]) * con["myo"] + (1 - f["rvo"]) * background
    return f["cav"] * con["blood"] + (f["epi"] - f["cav"]) * myo + (1 - f["epi"]) * rv


def _acquire(img: np.ndarray, x: np.ndarray, y: np.ndarray, extent: float, sigma: float, bias: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Smooth bias field then Rician noise; returns int16 counts."""
    xn, yn = x / extent - 0.5, y / extent - 0.5
    field = 1 + bias[0] * xn + bias[1] * yn + bias[2] * (xn**2 + yn**2) * 2
    img = img * field.reshape(field.shape + (1,) * (img.ndim - field.ndim))
    re = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    noisy = np.hypot(re, sigma * rng.standard_normal(img.shape, dtype=np.float32))
    return np.clip(np.round(noisy * INTENSITY_SCALE), 0, 32767).astype(np.int16)


def _rv_insertion_truth(heart: _Heart, rot: np.ndarray, sp: float) -> list[list[float] | None]:
    """Per slice, the RAS unit direction from the LV centre to the anterior RV insertion point (at ED).

    Found on the closed-form geometry: the insertion points are the ends of the arc of angles where the
    RV (its outer wall included) touches the LV 2 mm outside the epicardium; the anterior one is the end
    further toward anterior+superior (RAS +y +z), as ``aha`` decides on images.
    """
    phi = np.radians(np.arange(0.0, 360.0, 0.5))
    radii = np.arange(0.0, 80.0, 0.1)
    out: list[list[float] | None] = []
    anterior = np.array([0.0, 1.0, 1.0]) / np.sqrt(2.0)
    for k in range(heart.slices):
        s = k / max(heart.slices - 1, 1)
        cx, cy = heart.cx + heart.tilt[0] * s, heart.cy + heart.tilt[1] * s
        x = (cx + radii[None, :] * np.cos(phi)[:, None]).astype(np.float32)
        y = (cy + radii[None, :] * np.sin(phi)[:, None]).astype(np.float32)
        f = heart.fields(heart.geometry(x, y, np.full_like(x, float(k))), 0.0, 0.05)
        lv = f["label"] >= 2
        epi = radii[np.where(lv.any(axis=1), lv.shape[1] - 1 - np.argmax(lv[:, ::-1], axis=1), 0)]
        probe = np.minimum(np.searchsorted(radii, epi + 2.0), len(radii) - 1)
        flags = f["rvo"][np.arange(len(phi)), probe] > 0.5
        if flags.all() or not flags.any():
            out.append(None)
            continue
        start = int(np.argmin(flags))
        rolled = np.roll(flags, -start)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], rolled.astype(int), [0]])))
        runs = list(zip(edges[::2], edges[1::2]))
        a0, a1 = max(runs, key=lambda r: r[1] - r[0])
        ends = [phi[(a0 + start) % len(phi)], phi[(a1 - 1 + start) % len(phi)] + np.radians(0.5)]
        dirs = [rot @ np.array([np.cos(e), np.sin(e), 0.0]) for e in ends]
        dirs = [d / np.linalg.norm(d) for d in dirs]
        best = max(dirs, key=lambda d: float(d @ anterior))
        out.append([round(float(v), 5) for v in best])
    return out


def generate_subject(params: PhantomConfig, index: int, inplane_rotation_deg: float = 0.0) -> PhantomSubject:
    """Render subject ``index`` of the dataset defined by ``params`` (pure function of both).

    ``inplane_rotation_deg`` rotates the cine's image grid in-plane about its centre while the heart
    stays where it is in patient (world) coordinates: what a scanner that orients its short-axis
    planes differently would record. The LGE is unchanged. 0 gives the dataset's own bytes.
    """
    d = _draw(params, index)
    heart, body, g = d.heart, d.body, d.grid
    n, sp, th, z, frames = g.size, g.spacing_mm, g.thickness_mm, g.slices, g.frames
    noise_rng = np.random.default_rng([params.seed, index, 1])

    # ---- cine -----------------------------------------------------------------------------
    i, j, k = np.meshgrid(np.arange(n), np.arange(n), np.arange(z), indexing="ij")
    grid_rot = np.eye(4)
    if inplane_rotation_deg:
        ca, sa, c0 = math.cos(math.radians(inplane_rotation_deg)), math.sin(math.radians(inplane_rotation_deg)), (n - 1) / 2
        grid_rot[:2, :2] = [[ca, -sa], [sa, ca]]
        grid_rot[:2, 3] = [c0 - ca * c0 + sa * c0, c0 - sa * c0 - ca * c0]
        i, j = (grid_rot[0, 0] * i + grid_rot[0, 1] * j + grid_rot[0, 3],
                grid_rot[1, 0] * i + grid_rot[1, 1] * j + grid_rot[1, 3])
    x, y, kf = (i * sp).astype(np.float32), (j * sp).astype(np.float32), k.astype(np.float32)
    body_f = body.fields(x, y, kf * th, sp)
    geom = heart.geometry(x, y, kf)
    es_phase = d.es_offset / frames
    cine = np.empty((n, n, z, frames), dtype=np.float32)
    cine_label = np.empty((n, n, z, frames), dtype=np.uint8)
    for f in range(frames):
        c = float(contraction(((f - d.ed) % frames) / frames, es_phase))
        fields = heart.fields(geom, c, sp)
        cine[..., f] = _compose(fields, body_f, d.cine_contrast, lge=False)
        cine_label[..., f] = fields["label"]
        if params.rv_label:  # the RV blood pool, as ACDC / M&Ms label it (its free wall is not labelled)
            cine_label[..., f][(fields["label"] == 0) & (fields["rvb"] > 0.5)] = RV_CODE
    cine_i16 = _acquire(cine, x, y, n * sp, d.noise[0], d.bias[0], noise_rng)
    affine = np.eye(4)
    affine[:3, :3] = d.rotation @ np.diag([sp, sp, th])
    affine[:3, 3] = d.origin
    cine_affine = affine @ grid_rot  # = affine unless the grid is rotated

    # ---- LGE: its grid -> world -> undo breath-hold -> cine physical frame -> elastic -> heart --
    n_l, sp_l = d.lge_size, d.lge_spacing_mm
    affine_l = np.eye(4)
    affine_l[:3, :3] = d.lge_rotation @ np.diag([sp_l, sp_l, th])
    affine_l[:3, 3] = d.lge_origin
    il, jl, kl = np.meshgrid(np.arange(n_l), np.arange(n_l), np.arange(z), indexing="ij")
    vox = np.stack([il, jl, kl, np.ones_like(il)], axis=-1).reshape(-1, 4).T.astype(np.float64)
    to_phys = np.linalg.inv(affine) @ np.linalg.inv(breath_hold_matrix(d.breath_hold)) @ affine_l
    phys = (to_phys @ vox)[:3].T.reshape(n_l, n_l, z, 3).astype(np.float32)
    px, py, pk = phys[..., 0] * sp, phys[..., 1] * sp, phys[..., 2]
    amp, kw, ph = d.elastic.amp.tolist(), d.elastic.k.tolist(), d.elastic.phase.tolist()
    ex = amp[0][0] * np.sin(kw[0][0] * px + ph[0][0]) + amp[0][1] * np.sin(kw[0][1] * py + ph[0][1])
    ey = amp[1][0] * np.sin(kw[1][0] * py + ph[1][0]) + amp[1][1] * np.sin(kw[1][1] * px + ph[1][1])
    px, py = px + ex, py + ey  # smooth in-plane elastic change, ~1 mm
    fields_l = heart.fields(heart.geometry(px, py, pk), 0.0, sp_l)
    lge = _compose(fields_l, body.fields(px, py, pk * th, sp_l), d.lge_contrast, lge=True)
    xl, yl = il * sp_l, jl * sp_l
    lge_i16 = _acquire(lge, xl, yl, n_l * sp_l, d.noise[1], d.bias[1], noise_rng)
    lge_label = fields_l["label"]

    ed, es = d.ed, (d.ed + d.es_offset) % frames
    ed_lab = cine_label[..., ed]
    myo_ed = int(np.isin(ed_lab, (2, 3)).sum())
    info = {
        "ed": ed,
        "es": es,
        "truth": {
            "generator_version": GENERATOR_VERSION,
            "infarct": heart.infarct,
            "infarct_percent": round(100.0 * float((ed_lab == 3).sum()) / max(myo_ed, 1), 3),
            "infarct_angle_deg": round(float(np.degrees(heart.inf_angle)), 3) if heart.infarct else None,
            "infarct_extent_deg": round(float(np.degrees(heart.inf_extent)), 3) if heart.infarct else None,
            "infarct_transmurality": round(float(heart.inf_trans), 3) if heart.infarct else None,
            "infarct_slices": list(heart.inf_k) if heart.infarct else None,
            "thickening_normal": round(float(heart.tf), 3),
            "ed_wall_base_mm": round(float(heart.w0), 3),
            "epicardial_motion_base_mm": round(float(heart.epi_in), 3),
            "thickening_infarct": round(float(heart.inf_tf), 3) if heart.infarct else None,
            "rv_insertion_anterior_ras": _rv_insertion_truth(heart, d.rotation, sp),
            "breath_hold": {**d.breath_hold, "matrix": [[round(float(v), 6) for v in row]
                                                         for row in breath_hold_matrix(d.breath_hold)]},
        },
    }
    return PhantomSubject(
        id=subject_id(index), cine=cine_i16, cine_affine=cine_affine, cine_label=cine_label,
        lge=lge_i16, lge_affine=affine_l, lge_label=lge_label, frame_ms=1000.0 / frames, info=info,
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _nifti(data: np.ndarray, affine: np.ndarray, zooms: tuple[float, ...]) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", "msec")
    return img


def write_subject(subject: PhantomSubject, directory: Path, cine_labels: bool = True) -> None:
    """Write one subject in the generic layout (plus the phantom's cine_label.nii.gz unless ``cine_labels``
    is false: a site's data has labels on the LGE only)."""
    directory.mkdir(parents=True, exist_ok=True)
    zc = tuple(float(v) for v in np.linalg.norm(subject.cine_affine[:3, :3], axis=0))
    zl = tuple(float(v) for v in np.linalg.norm(subject.lge_affine[:3, :3], axis=0))
    nib.save(_nifti(subject.cine, subject.cine_affine, zc + (subject.frame_ms,)), directory / "cine.nii.gz")
    if cine_labels:
        nib.save(_nifti(subject.cine_label, subject.cine_affine, zc + (subject.frame_ms,)),
                 directory / "cine_label.nii.gz")
    nib.save(_nifti(subject.lge, subject.lge_affine, zl), directory / "lge.nii.gz")
    nib.save(_nifti(subject.lge_label, subject.lge_affine, zl), directory / "lge_label.nii.gz")
    (directory / "info.yaml").write_text(yaml.safe_dump(subject.info, sort_keys=False))


def marker_content(params: PhantomConfig) -> dict[str, Any]:
    from mi_pipeline.config import to_dict

    return {"generator_version": GENERATOR_VERSION, "params": to_dict(params),
            "subjects": [subject_id(i) for i in range(params.subjects)]}


def generate_dataset(out: Path, params: PhantomConfig, log: Callable[[str], None] | None = None) -> list[str]:
    """Write ``params.subjects`` subjects under ``out`` and the marker file last; returns the ids."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    ids = []
    for index in range(params.subjects):
        subject = generate_subject(params, index)
        target = out / subject.id
        if target.exists():
            shutil.rmtree(target)
        write_subject(subject, target, cine_labels=params.cine_labels)
        ids.append(subject.id)
        if log:
            log(f"phantom: wrote {target}")
    (out / MARKER).write_text(json.dumps(marker_content(params), indent=1) + "\n")
    return ids
