"""Step 3: multi-modal alignment of the LGE (moving) onto the cine ED frame (fixed), per slice.

Model: MONAI GlobalNet (affine) followed by LocalNet (deformable) on the affinely aligned pair; the
two fields are composed into one displacement on the cine grid, so LGE labels are resampled once.
GlobalNet's affine acts on a centred, normalised grid here (MONAI's own grid is in pixels from the
corner, where a tiny change of the matrix swings the far corner by pixels); its output is scaled
back to pixels, so one learning rate means the same at any crop size.

Loss: -MI(LGE warped, cine ED) + affine_weight x -MI(LGE affinely warped, cine ED)
      + smooth_weight x bending(deformable part) [+ mask_dice_weight x Dice(warped LGE labels, cine labels)].

Validation (``myo_dice``): LGE myocardium warped into cine space vs the cine ED myocardium, averaged
over slices with myocardium, and ``myo_dice_before`` (no registration). Label-free figures are
always logged beside their no-registration value: ``mi`` / ``mi_identity`` (the training objective)
and ``edge_alignment`` / ``edge_alignment_identity`` (``registration_qa``'s criterion). Without cine
labels there is no ``myo_dice``: ``edge_alignment`` decides best_model.pth (``labels_available`` 0),
and the log warns in one line whenever the network does not beat no registration.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mi_pipeline.config import Config
from mi_pipeline.data.cache import Subject, SubjectStore
from mi_pipeline.engine.task import Batch, TrainTask
from mi_pipeline.errors import ConfigError
from mi_pipeline.metrics import dice
from mi_pipeline.stages import common, registration_qa
from mi_pipeline.stages.lazy import SplitSlices
from mi_pipeline.stages.monai_parts import DiceLoss, GlobalNet, LocalNet

VAL_BATCH = 32


class AffineDeformableNet(nn.Module):
    """GlobalNet (affine, centred normalised grid) then LocalNet; ``forward`` -> (total, affine, local)."""

    def __init__(self, size: int, channels: int, levels: int) -> None:
        super().__init__()
        self.affine = GlobalNet(image_size=[size, size], spatial_dims=2, in_channels=2,
                                num_channel_initial=channels, depth=levels)
        axis = torch.linspace(-1.0, 1.0, size)
        # plain attribute, like MONAI's own grid: rebuilt by the constructor, not in the state dict
        self.affine.output_block.grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"))
        self.pixels_per_unit = (size - 1) / 2.0
        self.deform = LocalNet(spatial_dims=2, in_channels=2, num_channel_initial=channels,
                               extract_levels=tuple(range(levels + 1)), out_channels=2,
                               out_kernel_initializer="zeros")

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        affine = self.affine(torch.cat([moving, fixed], dim=1)) * self.pixels_per_unit
        local = self.deform(torch.cat([common.warp(moving, affine), fixed], dim=1))
        return common.compose(affine, local), affine, local


def build_model(cfg: Config) -> nn.Module:
    r = cfg.registration
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AffineDeformableNet(cfg.data.crop, r.channels, r.levels)


def predict_ddf(model: nn.Module, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Displacement (B, 2, H, W) on the cine grid pulling the LGE (moving) onto the cine ED (fixed)."""
    return model(moving, fixed)[0]


def refine_ddf(moving: torch.Tensor, fixed: torch.Tensor, ddf: torch.Tensor, steps: int, lr: float,
               smooth_weight: float) -> torch.Tensor:
    """Instance optimisation: improve the network's field for this pair with the training loss.

    Optimises a per-slice translation plus a residual field (bending-regularised) added to ``ddf``,
    maximising MI between the warped LGE and the cine ED frame. Deterministic (Adam, no sampling).
    ``smooth_weight`` must be far stronger than training's: MI of one slice pair is noisy, and a
    loosely held residual warps the myocardial border to fit it (``refine_smooth_weight``).
    """
    if steps <= 0:
        return ddf
    sim, bend = common.similarity_loss("mi"), common.smoothness_loss("bending")
    shift = torch.zeros(ddf.shape[0], 2, 1, 1, dtype=ddf.dtype, device=ddf.device, requires_grad=True)
    resid = torch.zeros_like(ddf, requires_grad=True)
    opt = torch.optim.Adam([shift, resid], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            total = ddf + shift + resid
            loss = sim(common.warp(moving, total), fixed) + smooth_weight * bend(ddf + resid)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (ddf + shift + resid).detach()


def lge_labels_in_cine(model: nn.Module, lge: torch.Tensor, lge_label: torch.Tensor, cine_ed: torch.Tensor,
                       batch: int = VAL_BATCH, refine_steps: int = 0, refine_lr: float = 0.05,
                       smooth_weight: float = 1.0) -> torch.Tensor:
    """LGE labels (N, H, W) carried into cine space (N, H, W) by ``model`` (+ optional refinement); CPU out."""
    device = next(model.parameters()).device
    out = []
    for part in common.batched(lge.shape[0], batch):
        moving, fixed = lge[part].unsqueeze(1).to(device), cine_ed[part].unsqueeze(1).to(device)
        with torch.no_grad():
            ddf = predict_ddf(model, moving, fixed)
        ddf = refine_ddf(moving, fixed, ddf, refine_steps, refine_lr, smooth_weight)
        with torch.no_grad():
            out.append(common.warp_labels(lge_label[part].to(device), ddf).cpu())
    return torch.cat(out).to(torch.uint8)


def labels_in_cine(cfg: Config, model: nn.Module, lge: torch.Tensor, lge_label: torch.Tensor,
                   cine_ed: torch.Tensor) -> torch.Tensor:
    """``lge_labels_in_cine`` with the config's refinement settings (what segmentation and evaluate use)."""
    r = cfg.registration
    return lge_labels_in_cine(model, lge, lge_label, cine_ed, refine_steps=r.refine_steps, refine_lr=r.refine_lr,
                              smooth_weight=r.refine_smooth_weight)


def register_subject(cfg: Config, model: nn.Module, lge: torch.Tensor, lge_label: torch.Tensor,
                     cine_ed: torch.Tensor, spacing_mm: float,
                     subject: str = "") -> tuple[torch.Tensor, registration_qa.PairQA]:
    """One subject's LGE labels carried into cine space by the QA's choice of identity / rigid / affine /
    deformable (``registration_qa``); (Z, H, W) uint8 on the CPU and the choice record."""
    r = cfg.registration
    device = next(model.parameters()).device

    def network(moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        totals, affines = [], []
        for part in common.batched(moving.shape[0], VAL_BATCH):
            total, affine, _ = model(moving[part], fixed[part])
            totals.append(total)
            affines.append(affine)
        return torch.cat(totals), torch.cat(affines)

    def refine(moving: torch.Tensor, fixed: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        return refine_ddf(moving, fixed, ddf, r.refine_steps, r.refine_lr, r.refine_smooth_weight)

    return registration_qa.register_pair(cfg, network, refine, lge.to(device), lge_label.to(device),
                                         cine_ed.to(device), spacing_mm, subject)


def register_subjects(cfg: Config, model: nn.Module, subjects: list) -> tuple[torch.Tensor, list]:
    """``register_subject`` for every cached subject, stacked along slices (what segmentation trains on)."""
    labels, records = [], []
    for s in subjects:
        lab, qa = register_subject(cfg, model, torch.from_numpy(s.lge.copy()), torch.from_numpy(s.lge_label.copy()),
                                   torch.from_numpy(s.cine[:, 0].copy()), float(s.spacing[0]), s.id)
        labels.append(lab)
        records.append(qa)
    return torch.cat(labels), records


def _augment_pairs(moving: torch.Tensor, fixed: torch.Tensor, labels: tuple[torch.Tensor, torch.Tensor] | None,
                   shift_px: float, generator: torch.Generator):
    """Same random flips for both images of a pair; an extra random shift of the moving (LGE) one."""
    b = moving.shape[0]
    flips = torch.rand(b, 2, generator=generator) < 0.5
    shifts = (torch.rand(b, 2, generator=generator) * 2.0 - 1.0) * shift_px
    if shift_px > 0:
        ddf = shifts.view(b, 2, 1, 1).expand(b, 2, *moving.shape[-2:]).contiguous()
        moving = common.warp(moving, ddf)
        if labels is not None:
            labels = (common.warp_labels(labels[0], ddf), labels[1])
    out_m, out_f, out_lm, out_lf = [], [], [], []
    for i in range(b):
        fh, fw = bool(flips[i, 0]), bool(flips[i, 1])
        out_m.append(common.flip_image(moving[i], fh, fw))
        out_f.append(common.flip_image(fixed[i], fh, fw))
        if labels is not None:
            out_lm.append(common.flip_image(labels[0][i], fh, fw))
            out_lf.append(common.flip_image(labels[1][i], fh, fw))
    labels = (torch.stack(out_lm), torch.stack(out_lf)) if labels is not None else None
    return torch.stack(out_m), torch.stack(out_f), labels


class RegistrationTask(TrainTask):
    name = "registration"
    metric_name = "myo_dice"
    higher_is_better = True

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.similarity = common.similarity_loss("mi")
        self.smoothness = common.smoothness_loss("bending")
        self.mask_dice = DiceLoss(include_background=False)

    def setup(self, device: torch.device) -> None:
        multiple = 2 ** self.cfg.registration.levels

        def check(subject: Subject) -> None:
            common.require_lge([subject], "registration")
            common.check_size([subject], multiple, where="registration")
            if subject.cine.shape[-1] != self.cfg.data.crop or subject.cine.shape[-2] != self.cfg.data.crop:
                raise ConfigError(f"cached subject {subject.id}: slices are {subject.cine.shape[-2]}x"
                                  f"{subject.cine.shape[-1]}, data.crop is {self.cfg.data.crop}; run step 1 again")

        # training pairs are read per batch (memory bounded by data.cache_budget_mb, not the cohort)
        store = SubjectStore(self.run_dir, self.cfg.data.cache_budget_mb)  # one budget for both splits
        self.train = SplitSlices(store, "train", check, where="registration")
        self.with_labels = self.cfg.registration.mask_dice_weight > 0
        if self.with_labels and not self.train.has("cine_label"):
            raise ConfigError("registration.mask_dice_weight > 0 needs cine labels for every training "
                              "subject; set it to 0 for data without them")
        self.val = SplitSlices(store, "val", check, where="registration validation")
        self.val_has_labels = self.val.has("cine_label")
        if not self.val_has_labels:  # no cine labels: best is chosen by edge alignment, named as such
            self.metric_name = "edge_alignment"

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        return [
            {"params": list(model.affine.parameters()), "lr": self.cfg.registration.affine_lr},
            {"params": list(model.deform.parameters()), "lr": lr},
        ]

    def num_train_samples(self) -> int:
        return len(self.train)

    def make_batch(self, indices: list[int], generator: torch.Generator, device: torch.device) -> Batch:
        r = self.cfg.registration
        moving = self.train.rows("lge", indices).unsqueeze(1)
        fixed = self.train.rows("cine", indices)[:, 0].unsqueeze(1)
        labels = None
        if self.with_labels:
            labels = (self.train.rows("lge_label", indices).long(), self.train.rows("cine_label", indices)[:, 0].long())
        if r.augment:
            moving, fixed, labels = _augment_pairs(moving, fixed, labels, r.augment_shift_px, generator)
        batch = {"moving": moving.to(device), "fixed": fixed.to(device)}
        if labels is not None:
            batch["moving_label"], batch["fixed_label"] = labels[0].to(device), labels[1].to(device)
        return batch

    def _losses(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        r = self.cfg.registration
        moving, fixed = batch["moving"], batch["fixed"]
        total_ddf, affine, local = model(moving, fixed)
        parts = {
            "similarity": self.similarity(common.warp(moving, total_ddf), fixed),
            "affine_similarity": self.similarity(common.warp(moving, affine), fixed),
            "smoothness": self.smoothness(local),
        }
        loss = parts["similarity"] + r.affine_weight * parts["affine_similarity"] + r.smooth_weight * parts["smoothness"]
        if "moving_label" in batch:
            onehot = nn.functional.one_hot(batch["moving_label"], common.NUM_LABEL_CODES).permute(0, 3, 1, 2).float()
            target = nn.functional.one_hot(batch["fixed_label"], common.NUM_LABEL_CODES).permute(0, 3, 1, 2).float()
            parts["mask_dice"] = self.mask_dice(common.warp(onehot, total_ddf), target)
            loss = loss + r.mask_dice_weight * parts["mask_dice"]
        return loss, parts, total_ddf

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, parts, _ = self._losses(model, batch)
        return loss, {k: v.detach() for k, v in parts.items()}

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Validation in batches of VAL_BATCH slices, each read from the cache on demand."""
        n = len(self.val)
        sim_sum, sim_identity, edge, edge_identity = 0.0, 0.0, 0.0, 0.0
        folded, counted, after, before = 0, 0, [], []
        for part in common.batched(n, VAL_BATCH):
            rows = range(part.start, part.stop)
            moving = self.val.rows("lge", rows).unsqueeze(1).to(device)
            fixed = self.val.rows("cine", rows)[:, 0].unsqueeze(1).to(device)
            _, parts, ddf = self._losses(model, {"moving": moving, "fixed": fixed})
            k = part.stop - part.start
            sim_sum += parts["similarity"].item() * k
            sim_identity += self.similarity(moving, fixed).item() * k
            edge += float(registration_qa.edge_alignment(common.warp(moving, ddf), fixed).sum())
            edge_identity += float(registration_qa.edge_alignment(moving, fixed).sum())
            folded += int((common.jacobian_determinant(ddf) <= 0).sum())
            counted += ddf.shape[0] * ddf.shape[-2] * ddf.shape[-1]
            if self.val_has_labels:
                moving_label = self.val.rows("lge_label", rows).long()
                warped = common.myo(common.warp_labels(moving_label.to(device), ddf).cpu())
                truth = common.myo(self.val.rows("cine_label", rows)[:, 0].long())
                before_mask = common.myo(moving_label)
                for i in range(k):
                    if bool(truth[i].any()) or bool(before_mask[i].any()):
                        after.append(dice(warped[i], truth[i]))
                        before.append(dice(before_mask[i], truth[i]))
        val_loss = sim_sum / n
        # label-free figures beside the same figure for "no registration": MI (the training objective)
        # and edge alignment (registration_qa's criterion, which the network is not trained on)
        metrics = {"val_loss": val_loss, "folding_percent": 100.0 * folded / counted,
                   "mi": -val_loss, "mi_identity": -sim_identity / n,
                   "edge_alignment": edge / n, "edge_alignment_identity": edge_identity / n}
        if not self.val_has_labels:
            metrics["labels_available"] = 0.0
            return metrics
        metrics.update({"myo_dice": common.mean(after), "myo_dice_before": common.mean(before),
                        "labels_available": 1.0})
        return metrics

    def baseline_warning(self, metrics: dict[str, float]) -> str | None:
        ours, base = ((metrics["myo_dice"], metrics["myo_dice_before"]) if "myo_dice" in metrics
                      else (metrics["edge_alignment"], metrics["edge_alignment_identity"]))
        if ours <= base:
            name = self.metric_name
            return (f"registration network does not beat no registration: {name} {ours:.4f} <= identity {base:.4f}"
                    f" (the per-subject QA falls back to identity/rigid where they are better; see registration_qa)")
        return None
