"""Registration that cannot make things worse: per-subject QA and fallback.

For every cine/LGE pair (one subject: its LGE slices against its cine ED slices) four candidate
fields are built on the cine grid, from the simplest to the most flexible:

* ``identity``   -- no registration (the scanner coordinates are trusted);
* ``rigid``      -- one in-plane rotation + translation for the whole stack, found by exhaustive
  search (rotations up to ``registration.qa_max_rotation_deg``, shifts up to ``qa_max_shift_mm``),
  maximising the criterion below; the network never sees misalignment this large in training;
* ``affine``     -- the network's affine part applied to the rigidly pre-aligned LGE, composed;
* ``deformable`` -- the network's full field on the pre-aligned LGE, composed (+ the optional
  test-time refinement, ``registration.refine_steps``).

Criterion (label-free, and deliberately *not* the network's training loss, so a network that learnt
to game mutual information does not pass its own exam): **edge alignment**, the mean over the
heart region of the squared cosine between the normalised gradient fields of the cine ED frame and
the warped LGE (NGF, Haber & Modersitzki 2006), ``(n_c . n_l)^2`` with ``n = g / sqrt(|g|^2 + eta^2)``
and ``eta`` the mean gradient magnitude of the image in the region. Squaring makes it blind to
contrast polarity (bright blood / dark nulled myocardium / bright fat), normalisation to intensity
scale, bias and nulling quality. Each image is first scaled by its 1st/99th percentiles and lightly
smoothed. The region is a Gaussian weight centred on the crop (step 1 crops around the LV), sigma
= crop/4, so the background and the field-of-view border hardly count.

Choice per subject: the candidate with the highest ``score - qa_margin x level`` (level 0 identity,
1 rigid, 2 affine, 3 deformable), where ``score`` is the slice-mean edge alignment; the deformable
candidate is not eligible when more than ``qa_max_folding_percent`` of the region folds (det J <= 0).
So a more flexible transform is kept only when it explains the images clearly better than a simpler
one; a pair that needs no registration keeps identity.

Confidence (what segmentation uses to decide which targets may supervise): the myocardium Dice
between the LGE labels carried by the chosen candidate and by the runner-up (the next best by the
same penalised score). Two nearly equally good explanations that put the myocardium in different
places mean the target's position is uncertain; ``confident`` is ``agreement >= qa_min_agreement``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mi_pipeline.config import Config
from mi_pipeline.metrics import dice
from mi_pipeline.stages import common

CANDIDATES = ("identity", "rigid", "affine", "deformable")


@dataclass(frozen=True)
class PairQA:
    """What the QA decided for one subject (JSON-friendly through ``as_dict``)."""

    subject: str
    chosen: str
    scores: dict[str, float]  # slice-mean edge alignment of every candidate
    folding_percent: float  # deformable candidate, heart region
    rigid_shift_px: tuple[float, float]
    rigid_rotation_deg: float
    runner_up: str
    agreement: float  # myocardium Dice chosen vs runner-up
    confident: bool

    @property
    def gain_over_identity(self) -> float:
        return self.scores[self.chosen] - self.scores["identity"]

    def as_dict(self) -> dict:
        out = asdict(self)
        out["rigid_shift_px"] = list(self.rigid_shift_px)
        out["gain_over_identity"] = self.gain_over_identity
        return out


# --- the criterion --------------------------------------------------------------------------------


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """Per-slice robust scaling to [0, 1] (1st/99th percentile) and a 3x3 box smoothing; (B, 1, H, W)."""
    flat = x.flatten(1)
    lo = torch.quantile(flat, 0.01, dim=1).view(-1, 1, 1, 1)
    hi = torch.quantile(flat, 0.99, dim=1).view(-1, 1, 1, 1)
    x = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)
    return nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def region_weight(size_h: int, size_w: int, device: torch.device | None = None) -> torch.Tensor:
    """Gaussian heart-region weight (H, W), centred on the crop, sigma = size / 4, summing to 1."""
    yy = torch.arange(size_h, dtype=torch.float32, device=device) - (size_h - 1) / 2
    xx = torch.arange(size_w, dtype=torch.float32, device=device) - (size_w - 1) / 2
    sigma_h, sigma_w = size_h / 4.0, size_w / 4.0
    w = torch.exp(-(yy[:, None] ** 2) / (2 * sigma_h ** 2) - (xx[None, :] ** 2) / (2 * sigma_w ** 2))
    return w / w.sum()


def _ngf(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Normalised gradient field (B, 2, H, W) of already normalised images (B, 1, H, W)."""
    gh, gw = torch.gradient(x[:, 0], dim=(-2, -1))
    mag = torch.sqrt(gh ** 2 + gw ** 2)
    eta = (mag * weight).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    norm = torch.sqrt(mag ** 2 + eta ** 2)
    return torch.stack([gh / norm, gw / norm], dim=1)


def edge_alignment(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Per-slice edge alignment (B,) of ``moving`` (already warped) with ``fixed``, both (B, 1, H, W); in [0, 1]."""
    weight = region_weight(*fixed.shape[-2:], device=fixed.device)
    a, b = _ngf(_normalise(moving), weight), _ngf(_normalise(fixed), weight)
    cos2 = (a * b).sum(dim=1) ** 2
    return (cos2 * weight).sum(dim=(-2, -1))


# --- candidates -----------------------------------------------------------------------------------


def rigid_field(n: int, h: int, w: int, angle_deg: float, shift: tuple[float, float],
                device: torch.device | None = None) -> torch.Tensor:
    """Field (n, 2, H, W) of a rotation about the crop centre then a shift (pixels, rows/cols) of the moving image."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    a = math.radians(angle_deg)
    ry = math.cos(a) * (yy - cy) - math.sin(a) * (xx - cx) + cy + shift[0]
    rx = math.sin(a) * (yy - cy) + math.cos(a) * (xx - cx) + cx + shift[1]
    return torch.stack([ry - yy, rx - xx]).unsqueeze(0).expand(n, 2, h, w).contiguous()


def _search(moving: torch.Tensor, fixed: torch.Tensor, angles: list[float], shifts: list[tuple[float, float]],
            chunk: int = 4096) -> tuple[float, float, tuple[float, float]]:
    """Best (score, angle, shift) over every (angle, shift) for the whole stack (slice-mean edge alignment).

    The field of a rotation + shift is the rotation's field plus the shift, so each angle's field is
    built once and all shifts are scored in batches of about ``chunk`` warped slices.
    """
    n, _, h, w = moving.shape
    weight = region_weight(h, w, device=fixed.device)
    fixed_ngf = _ngf(_normalise(fixed), weight)
    moving_n = _normalise(moving)  # warp the normalised image: the percentiles do not move with the field
    per = max(1, chunk // n)
    best = (-1.0, 0.0, (0.0, 0.0))
    for angle in angles:
        base = rigid_field(1, h, w, angle, (0.0, 0.0), fixed.device)
        for start in range(0, len(shifts), per):
            group = shifts[start:start + per]
            k = len(group)
            offsets = torch.tensor(group, dtype=base.dtype, device=base.device).view(k, 1, 2, 1, 1)
            ddf = (base.unsqueeze(0) + offsets).expand(k, n, 2, h, w).reshape(k * n, 2, h, w)
            warped = common.warp(moving_n.repeat(k, 1, 1, 1), ddf)
            cos2 = (_ngf(warped, weight) * fixed_ngf.repeat(k, 1, 1, 1)).sum(dim=1) ** 2
            scores = (cos2 * weight).sum(dim=(-2, -1)).view(k, n).mean(dim=1)
            i = int(torch.argmax(scores))
            if float(scores[i]) > best[0] + 1e-9:
                best = (float(scores[i]), angle, group[i])
    return best


def rigid_search(moving: torch.Tensor, fixed: torch.Tensor, max_shift_px: float,
                 max_rotation_deg: float) -> tuple[float, tuple[float, float]]:
    """Coarse-to-fine exhaustive search of one rotation + shift for a stack (B, 1, H, W); returns (angle, shift)."""
    reach = max(int(math.ceil(max_shift_px)), 0)
    coarse_shifts = [(float(dy), float(dx)) for dy in range(-reach, reach + 1, 2) for dx in range(-reach, reach + 1, 2)]
    steps = max(int(math.ceil(max_rotation_deg / 5.0)), 0)
    coarse_angles = [5.0 * k * max_rotation_deg / max(5.0 * steps, 1e-9) for k in range(-steps, steps + 1)] or [0.0]
    _, angle, shift = _search(moving, fixed, coarse_angles, coarse_shifts or [(0.0, 0.0)])
    half = 2.5 * max_rotation_deg / max(5.0 * steps, 1e-9) if steps else 0.0
    fine_angles = sorted({angle - half, angle, angle + half}) if steps else [0.0]
    fine_shifts = [(shift[0] + dy, shift[1] + dx) for dy in (-1.0, 0.0, 1.0) for dx in (-1.0, 0.0, 1.0)]
    _, angle, shift = _search(moving, fixed, fine_angles, fine_shifts)
    return angle, shift


Network = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Refine = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def candidate_fields(cfg: Config, network: Network, refine: Refine, moving: torch.Tensor, fixed: torch.Tensor,
                     spacing_mm: float) -> tuple[dict[str, torch.Tensor], float, tuple[float, float]]:
    """The four candidate fields (B, 2, H, W) for one subject's stack, and the rigid angle/shift.

    ``network(moving, fixed)`` -> (total field, affine field) of the registration model;
    ``refine(moving, fixed, field)`` -> the test-time refined field (identity function when off).
    """
    r = cfg.registration
    n, _, h, w = moving.shape
    angle, shift = rigid_search(moving, fixed, r.qa_max_shift_mm / max(spacing_mm, 1e-6), r.qa_max_rotation_deg)
    rigid = rigid_field(n, h, w, angle, shift, fixed.device)
    pre = common.warp(moving, rigid)
    with torch.no_grad():
        total, affine = network(pre, fixed)
    deformable = refine(moving, fixed, common.compose(rigid, total))
    fields = {"identity": torch.zeros_like(rigid), "rigid": rigid, "affine": common.compose(rigid, affine),
              "deformable": deformable}
    return fields, angle, shift


# --- the choice -----------------------------------------------------------------------------------


def choose(cfg: Config, scores: dict[str, float], folding_percent: float) -> tuple[str, str]:
    """(chosen, runner-up): best penalised score; deformable ineligible above the folding limit."""
    r = cfg.registration
    eligible = [c for c in CANDIDATES if c != "deformable" or folding_percent <= r.qa_max_folding_percent]
    ranked = sorted(eligible, key=lambda c: (-(scores[c] - r.qa_margin * CANDIDATES.index(c)), CANDIDATES.index(c)))
    return ranked[0], ranked[1]


def register_pair(cfg: Config, network: Network, refine: Refine, lge: torch.Tensor, lge_label: torch.Tensor,
                  cine_ed: torch.Tensor, spacing_mm: float, subject: str = "") -> tuple[torch.Tensor, PairQA]:
    """One subject: LGE (Z, H, W), its labels (Z, H, W) and the cine ED frames (Z, H, W) -> the LGE labels
    in cine space by the chosen candidate (Z, H, W uint8, CPU) and the QA record."""
    device = cine_ed.device
    moving, fixed = lge.unsqueeze(1).float().to(device), cine_ed.unsqueeze(1).float().to(device)
    labels = lge_label.long().to(device)
    fields, angle, shift = candidate_fields(cfg, network, refine, moving, fixed, spacing_mm)
    with torch.no_grad():
        scores = {c: float(edge_alignment(common.warp(moving, f), fixed).mean()) for c, f in fields.items()}
        weight = region_weight(*fixed.shape[-2:], device=device)
        folded = (common.jacobian_determinant(fields["deformable"]) <= 0).float()
        folding = 100.0 * float((folded * weight).sum(dim=(-2, -1)).mean())
        chosen, runner_up = choose(cfg, scores, folding)
        warped = common.warp_labels(labels, fields[chosen])
        second = common.warp_labels(labels, fields[runner_up])
    agreement = dice(common.myo(warped).cpu(), common.myo(second).cpu())
    qa = PairQA(subject=subject, chosen=chosen, scores=scores, folding_percent=folding,
                rigid_shift_px=(float(shift[0]), float(shift[1])), rigid_rotation_deg=float(angle),
                runner_up=runner_up, agreement=float(agreement),
                confident=bool(agreement >= cfg.registration.qa_min_agreement))
    return warped.cpu().to(torch.uint8), qa


def summary(records: list[PairQA]) -> dict:
    """Counts of each choice, confident subjects, and the mean gain over identity (for logs and reports)."""
    n = len(records)
    return {
        "subjects": n,
        "chosen": {c: sum(r.chosen == c for r in records) for c in CANDIDATES},
        "confident": sum(r.confident for r in records),
        "mean_gain_over_identity": common.mean([r.gain_over_identity for r in records]),
        "criterion": "edge alignment (NGF squared cosine, heart region); penalty qa_margin per level",
    }
