"""Helpers shared by the three trained stages: one way to do each thing.

Conventions used everywhere in ``stages``:

* images are 2D short-axis slices, tensors shaped (B, C, H, W);
* a displacement field (``ddf``) is (B, 2, H, W) in *pixels*; channel 0 moves along H (rows),
  channel 1 along W (columns) -- MONAI ``Warp``'s convention. ``warp(moving, ddf)(x) =
  moving(x + ddf(x))``: the field lives on the *fixed* grid and pulls the moving image onto it;
* labels are integer maps (B, H, W) with the cache's codes (0 bg, 1 cavity, 2 myo, 3 infarct).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mi_pipeline.data.cache import Subject
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.errors import CheckpointError, InputError
from mi_pipeline.stages.monai_parts import (
    BendingEnergyLoss,
    DiffusionLoss,
    GlobalMutualInformationLoss,
    LocalNormalizedCrossCorrelationLoss,
    Warp,
)

MYO_CODES = (2, 3)  # myocardium = remote myocardium + infarct
INFARCT_CODE = 3
NUM_LABEL_CODES = 4


# --- data: checks on cached subjects (stages/lazy.py reads them) ---------------------------------


def require_lge(subjects: list[Subject], stage: str) -> None:
    """Registration and segmentation learn from LGE labels: refuse cine-only data in one clear line."""
    missing = [s.id for s in subjects if s.lge is None or s.lge_label is None]
    if missing:
        raise InputError(f"{stage} needs LGE images with LGE labels, but cached subject {missing[0]} has none "
                         f"({len(missing)} subject(s) without; data.format acdc / mnms give cine only): train "
                         f"only the motion stage on this data (python -m mi_pipeline.train --stage motion)")


def require_cine_labels(subjects: list[Subject], stage: str) -> None:
    """Without LGE a stage can learn only from cine labels: refuse a subject without them in one line."""
    missing = [s.id for s in subjects if s.cine_label is None]
    if missing:
        raise InputError(f"{stage} needs cine labels, but cached subject {missing[0]} has none ({len(missing)} "
                         f"subject(s) without) and the data has no LGE images either: train only the motion stage "
                         f"on this data (python -m mi_pipeline.train --stage motion)")


def check_frames(subjects: list[Subject], frames: int, *, where: str) -> None:
    for s in subjects:
        if s.cine.shape[1] != frames:
            raise InputError(f"cached subject {s.id}: {s.cine.shape[1]} cine frames, the config "
                             f"(data.frames) says {frames}; run step 1 (train --stage data) again")


def check_size(subjects: list[Subject], multiple: int, *, where: str) -> None:
    for s in subjects:
        h, w = s.cine.shape[-2:]
        if h % multiple or w % multiple:
            raise InputError(f"cached subject {s.id}: slice size {h}x{w} is not a multiple of {multiple} "
                             f"(needed by {where}); set data.crop to a multiple of {multiple}")


# --- warping ----------------------------------------------------------------------------------

with warnings.catch_warnings():  # "Using PyTorch native grid_sample": expected, not news
    warnings.simplefilter("ignore")
    _WARP = Warp(mode="bilinear", padding_mode="border")


def warp(image: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Bilinear pull-back of ``image`` (B, C, H, W) by ``ddf`` (B, 2, H, W), border padding."""
    return _WARP(image, ddf)


def warp_labels(labels: torch.Tensor, ddf: torch.Tensor, num_classes: int = NUM_LABEL_CODES) -> torch.Tensor:
    """Warp an integer label map (B, H, W): one-hot, bilinear, argmax (no holes, no label mixing)."""
    num_classes = max(num_classes, int(labels.max()) + 1) if labels.numel() else num_classes  # RV code 5 (ACDC, M&Ms)
    onehot = nn.functional.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).to(ddf.dtype)
    return warp(onehot, ddf).argmax(dim=1)


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Field of ``warp(warp(x, first), second)`` as one field: second(x) + first(x + second(x))."""
    return second + warp(first, second)


def flip_field(ddf: torch.Tensor, flip_h: bool, flip_w: bool) -> torch.Tensor:
    """Flip a (..., 2, H, W) displacement field spatially; the flipped axis' component changes sign."""
    if flip_h:
        ddf = ddf.flip(-2) * torch.tensor([-1.0, 1.0], dtype=ddf.dtype, device=ddf.device).view(2, 1, 1)
    if flip_w:
        ddf = ddf.flip(-1) * torch.tensor([1.0, -1.0], dtype=ddf.dtype, device=ddf.device).view(2, 1, 1)
    return ddf


def flip_image(x: torch.Tensor, flip_h: bool, flip_w: bool) -> torch.Tensor:
    dims = [d for d, f in ((-2, flip_h), (-1, flip_w)) if f]
    return x.flip(dims) if dims else x


# --- losses -----------------------------------------------------------------------------------


def similarity_loss(kind: str, *, lncc_kernel: int = 9) -> nn.Module:
    """Image dissimilarity (lower is better): LNCC or MSE (mono-modal), MI (multi-modal; inputs in [0, 1])."""
    if kind == "lncc":
        return LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=lncc_kernel)
    if kind == "mse":
        return nn.MSELoss()
    if kind == "mi":
        return GlobalMutualInformationLoss()
    raise ValueError(f"unknown similarity {kind!r}")


class _Quiet(nn.Module):
    """MONAI's Bending/Diffusion losses index with a list, and torch warns about it on every call
    (the values are right: checked against a hand-written central difference). Silence just that."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, ddf: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            return self.loss(ddf)


def smoothness_loss(kind: str) -> nn.Module:
    """Regulariser of a displacement field: bending energy (2nd derivatives) or diffusion (1st)."""
    if kind == "bending":
        return _Quiet(BendingEnergyLoss())
    if kind == "diffusion":
        return _Quiet(DiffusionLoss())
    raise ValueError(f"unknown smoothness {kind!r}")


# --- metrics ----------------------------------------------------------------------------------


def mean(values: list[float | None], default: float = 0.0) -> float:
    """Mean of the defined values, ``default`` when there are none (keeps metrics NaN-free)."""
    kept = [v for v in values if v is not None]
    return float(sum(kept) / len(kept)) if kept else default


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """det of the Jacobian of x -> x + ddf(x), (B, H, W); central differences, one-sided at borders."""
    du_h = torch.gradient(ddf, dim=-2)  # d/dH of both components
    du_w = torch.gradient(ddf, dim=-1)
    j00 = 1.0 + du_h[0][:, 0]
    j01 = du_w[0][:, 0]
    j10 = du_h[0][:, 1]
    j11 = 1.0 + du_w[0][:, 1]
    return j00 * j11 - j01 * j10


def folding_percent(ddf: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """% of pixels (inside ``mask`` (B, H, W) if given) where the Jacobian determinant is <= 0."""
    folded = jacobian_determinant(ddf) <= 0
    if mask is None:
        return 100.0 * float(folded.float().mean())
    mask = mask.bool()
    count = int(mask.sum())
    return 100.0 * int((folded & mask).sum()) / count if count else 0.0


def myo(labels: torch.Tensor) -> torch.Tensor:
    """Myocardium (remote + infarct) of a cache label map."""
    return (labels == MYO_CODES[0]) | (labels == MYO_CODES[1])


# --- batching helpers ---------------------------------------------------------------------------


def batched(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# --- upstream models ----------------------------------------------------------------------------


def load_frozen(model: nn.Module, path: Path, stage: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``best_model.pth`` of ``stage`` into ``model``, in eval mode on ``device``; CheckpointError on any mismatch.

    Returns the model and the checkpoint's payload (epoch, config hash, ...).
    """
    payload = ckpt.load_checkpoint(path, required=("model",))
    if payload.get("stage", stage) != stage:
        raise CheckpointError(f"{path}: holds a {payload.get('stage')!r} model, expected {stage!r}")
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: does not fit the {stage} model of the current config "
                              f"(retrain {stage} or restore its config): {first}") from None
    return model.to(device).eval(), payload
