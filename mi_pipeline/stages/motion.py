"""Step 2: unsupervised ED -> frame-t deformable registration of the cine (VoxelMorph-style).

One sample is one (slice, frame t) pair with t = 1..T-1: moving = the ED frame, fixed = frame t.
The net predicts a displacement field on frame t's grid that pulls the ED frame onto frame t;
loss = LNCC (or MSE) + smooth_weight x diffusion (or bending) regulariser, plus, where every training
subject carries cine labels (ACDC, M&Ms, a labelled phantom), label_dice_weight x Dice loss of the warped
ED myocardium against the ES myocardium on the ED -> ES pairs: the one pair such datasets annotate.

Validation (``myo_dice``): the ED myocardium warped to ES vs the true ES myocardium, averaged over
the validation slices that show myocardium, with the identity baseline (``myo_dice_identity``) and
the % of myocardial pixels whose Jacobian determinant is <= 0 (``folding_percent``, all frames).
The label-free figure is always logged beside its identity value: ``lncc`` / ``lncc_identity``
(``neg_mse`` with MSE similarity) of the warped ED frame vs every frame t. Without cine labels
(real data) there is no ``myo_dice``: that figure decides best_model.pth, ``labels_available`` is 0,
and the log warns in one line whenever the model does not beat the identity.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from mi_pipeline.config import Config
from mi_pipeline.data.cache import Subject, SubjectStore
from mi_pipeline.engine.task import Batch, TrainTask
from mi_pipeline.metrics import dice
from mi_pipeline.stages import common
from mi_pipeline.stages.lazy import SplitSlices
from mi_pipeline.stages.monai_parts import DiceLoss, VoxelMorph, VoxelMorphUNet

VAL_BATCH = 32


def build_model(cfg: Config) -> nn.Module:
    """VoxelMorph (2D, plain displacement output) whose last conv starts at zero = identity."""
    m = cfg.motion
    backbone = VoxelMorphUNet(
        spatial_dims=2, in_channels=2, unet_out_channels=m.channels[0], channels=m.channels,
        final_conv_channels=(m.channels[0], m.channels[0]),
    )
    with warnings.catch_warnings():  # its Warp announces "Using PyTorch native grid_sample"
        warnings.simplefilter("ignore")
        model = VoxelMorph(backbone=backbone, integration_steps=0, half_res=False, spatial_dims=2)
    out = backbone.net[1].final_conv_out.conv
    nn.init.zeros_(out.weight)
    if out.bias is not None:
        nn.init.zeros_(out.bias)
    return model


def size_multiple(cfg: Config) -> int:
    return 2 ** (len(cfg.motion.channels) // 2)


def predict_ddf(model: nn.Module, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Displacement (B, 2, H, W) pulling ``moving`` (ED) onto ``fixed`` (frame t)."""
    return model(moving, fixed)[1]


def motion_fields(model: nn.Module, cine: torch.Tensor, batch: int = VAL_BATCH) -> torch.Tensor:
    """ED -> every frame fields for stacked cine slices (N, T, H, W): (N, T, 2, H, W), frame 0 included.

    Runs in batches under no_grad on the model's device; returns CPU tensors.
    """
    device = next(model.parameters()).device
    n, t, h, w = cine.shape
    moving = cine[:, :1].expand(n, t, h, w).reshape(n * t, 1, h, w)
    fixed = cine.reshape(n * t, 1, h, w)
    out = []
    with torch.no_grad():
        for part in common.batched(n * t, batch):
            out.append(predict_ddf(model, moving[part].to(device), fixed[part].to(device)).cpu())
    return torch.cat(out).reshape(n, t, 2, h, w)


def supervision_note(weight: float, labels: bool) -> str:
    """One line for the log: whether the training pairs learn from the cine labels, and why (not)."""
    if weight > 0 and labels:
        return f"training on image similarity + ED -> ES myocardium Dice of the cine labels (weight {weight:g})"
    why = "motion.label_dice_weight is 0" if labels else "not every training subject has cine labels"
    return f"training on image similarity alone ({why})"


class MotionTask(TrainTask):
    name = "motion"
    metric_name = "myo_dice"
    higher_is_better = True

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.similarity = common.similarity_loss(cfg.motion.similarity, lncc_kernel=cfg.motion.lncc_kernel)
        self.smoothness = common.smoothness_loss(cfg.motion.smooth_loss)
        self.label_dice = DiceLoss(reduction="none")

    def setup(self, device: torch.device) -> None:
        def check(subject: Subject) -> None:
            common.check_frames([subject], self.cfg.data.frames, where="motion")
            common.check_size([subject], size_multiple(self.cfg), where="motion")

        # training slices are read per batch (memory bounded by data.cache_budget_mb, not the cohort)
        store = SubjectStore(self.run_dir, self.cfg.data.cache_budget_mb)  # one budget for both splits
        self.train = SplitSlices(store, "train", check, where="motion")
        slices = torch.arange(len(self.train))
        frames = torch.arange(1, self.cfg.data.frames)
        self.pairs = torch.cartesian_prod(slices, frames)  # (N*(T-1), 2): (slice, t)
        self.supervised = self.cfg.motion.label_dice_weight > 0 and self.train.has("cine_label")
        self.val = SplitSlices(store, "val", check, where="motion validation")
        self.val_has_labels = self.val.has("cine_label")
        if not self.val_has_labels:  # no cine labels: no Dice; the image similarity decides, named as such
            self.metric_name = self.similarity_name

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def notes(self) -> list[str]:
        return [supervision_note(self.cfg.motion.label_dice_weight, self.train.has("cine_label"))]

    def num_train_samples(self) -> int:
        return int(self.pairs.shape[0])

    def make_batch(self, indices: list[int], generator: torch.Generator, device: torch.device) -> Batch:
        sl, t = self.pairs[indices].unbind(1)
        cine = self.train.rows("cine", sl)  # (B, T, H, W)
        rows = torch.arange(cine.shape[0])
        batch = {
            "moving": cine[rows, 0].unsqueeze(1).to(device),
            "fixed": cine[rows, t].unsqueeze(1).to(device),
        }
        if self.supervised:  # the ED and ES labels of each pair; only pairs at ES count in the loss
            labels = self.train.rows("cine_label", sl).long()
            batch["moving_myo"] = common.myo(labels[rows, 0]).unsqueeze(1).float().to(device)
            batch["fixed_myo"] = common.myo(labels[rows, t]).unsqueeze(1).float().to(device)
            batch["at_es"] = (t == self.train.es[sl]).float().to(device)
        return batch

    def _losses(self, model: nn.Module, moving: torch.Tensor, fixed: torch.Tensor):
        ddf = predict_ddf(model, moving, fixed)
        sim = self.similarity(common.warp(moving, ddf), fixed)
        smooth = self.smoothness(ddf)
        return sim + self.cfg.motion.smooth_weight * smooth, sim, smooth, ddf

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total, sim, smooth, ddf = self._losses(model, batch["moving"], batch["fixed"])
        parts = {"similarity": sim.detach(), "smoothness": smooth.detach()}
        if self.cfg.motion.fold_weight > 0:
            folding = torch.relu(-common.jacobian_determinant(ddf)).mean()
            total = total + self.cfg.motion.fold_weight * folding
            parts["folding"] = folding.detach()
        if "at_es" in batch:
            per_pair = self.label_dice(common.warp(batch["moving_myo"], ddf), batch["fixed_myo"]).flatten()
            weight = batch["at_es"]
            label_loss = (per_pair * weight).sum() / weight.sum().clamp(min=1.0)
            total = total + self.cfg.motion.label_dice_weight * label_loss
            parts["label_dice"] = label_loss.detach()
        return total, parts

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Validation in batches of VAL_BATCH pairs (then slices), each read from the cache on demand."""
        n, t = len(self.val), self.cfg.data.frames
        # every (slice, frame >= 1) pair: validation loss and folding
        loss_sum, sim_sum, sim_identity, folded, counted = 0.0, 0.0, 0.0, 0, 0
        for part in common.batched(n * (t - 1), VAL_BATCH):
            pairs = torch.arange(part.start, part.stop)
            sl, fr = pairs // (t - 1), pairs % (t - 1) + 1
            first = int(sl[0])
            cine = self.val.rows("cine", range(first, int(sl[-1]) + 1))
            local = sl - first
            m, f = cine[local, 0].unsqueeze(1).to(device), cine[local, fr].unsqueeze(1).to(device)
            total, sim, _, ddf = self._losses(model, m, f)
            loss_sum += float(total) * (part.stop - part.start)
            sim_sum += float(sim) * (part.stop - part.start)
            sim_identity += float(self.similarity(m, f)) * (part.stop - part.start)
            fold = common.jacobian_determinant(ddf).cpu() <= 0
            region = (common.myo(self.val.rows("cine_label", range(first, int(sl[-1]) + 1)).long())[local, fr]
                      if self.val_has_labels else torch.ones_like(fold))
            folded += int((fold & region).sum())
            counted += int(region.sum())
        pairs_total = n * (t - 1)
        sim_name = self.similarity_name
        metrics = {"val_loss": loss_sum / pairs_total, "folding_percent": 100.0 * folded / counted if counted else 0.0,
                   sim_name: -sim_sum / pairs_total, f"{sim_name}_identity": -sim_identity / pairs_total}
        if not self.val_has_labels:
            metrics["labels_available"] = 0.0
            return metrics
        # ED myocardium warped to ES vs the true ES myocardium
        after, before = [], []
        for part in common.batched(n, VAL_BATCH):
            cine, labels = self.val.rows("cine", range(part.start, part.stop)), \
                self.val.rows("cine_label", range(part.start, part.stop)).long()
            idx, es = torch.arange(cine.shape[0]), self.val.es[part]
            myo_masks = common.myo(labels)
            es_myo = myo_masks[idx, es]
            ddf = predict_ddf(model, cine[:, 0:1].to(device), cine[idx, es].unsqueeze(1).to(device))
            warped = common.myo(common.warp_labels(labels[:, 0].to(device), ddf)).cpu()
            for k in range(warped.shape[0]):
                if not bool(myo_masks[k, 0].any()) and not bool(es_myo[k].any()):
                    continue
                after.append(dice(warped[k], es_myo[k]))
                before.append(dice(myo_masks[k, 0], es_myo[k]))
        metrics.update({"myo_dice": common.mean(after), "myo_dice_identity": common.mean(before),
                        "labels_available": 1.0})
        return metrics

    @property
    def similarity_name(self) -> str:
        """The label-free figure: LNCC (higher = better) or negative MSE, of warped ED vs frame t."""
        return "lncc" if self.cfg.motion.similarity == "lncc" else f"neg_{self.cfg.motion.similarity}"

    def baseline_warning(self, metrics: dict[str, float]) -> str | None:
        key = "myo_dice" if "myo_dice" in metrics else self.similarity_name
        base = "myo_dice_identity" if key == "myo_dice" else f"{key}_identity"
        if metrics[key] <= metrics[base]:
            return f"motion model does not beat the identity (no motion): {key} {metrics[key]:.4f} <= {metrics[base]:.4f}"
        return None
