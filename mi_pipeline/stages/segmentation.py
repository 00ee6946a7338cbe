"""Step 4: UNet from cine frames (+ motion fields) to background / myocardium / infarct, per slice.

Inputs (``segmentation_inputs``, also what ``inference`` uses): the T cine frames, then -- with
``motion_features`` -- the frozen motion model's ED -> frame-t displacement for every frame
(2 x T channels, frame 0 included, scaled by ``MOTION_SCALE``). Targets: the LGE labels carried
into cine space by the frozen registration model, mapped to classes 0 bg (+ cavity), 1 remote
myocardium, 2 infarct. Upstream models are read once in ``setup`` and applied under no_grad.

Without LGE (the prepared cache counts none: ``cache.lge_available`` False, as the plan decides) the
targets are the cache's cine ED labels instead, no registration model is read, and the infarct class
never sees a positive: the model is *myocardium only*. Its best metric is then ``myo_dice`` and its
``best_model.pth`` says so (``facts``: ``myocardium_only``), which ``clinical.trust`` reads so that no
infarct number from it is presented as a measurement.

Validation, per subject (3D over its slices), against the true cine ED labels when the cache has
them, else against the registered LGE labels (``labels_available`` says which):
``infarct_dice`` over subjects with an infarct, ``myo_dice`` (classes 1|2), ``infarct_fp_percent``
(predicted infarct as % of predicted myocardium, subjects without infarct) and
``infarct_size_error`` (|predicted - true| infarct % of myocardium, percentage points).
If no validation subject has an infarct, ``infarct_dice`` is ``1 - infarct_fp_percent / 100``.

With ``learn_rv`` the model has a 4th class, the RV blood pool, taught by the RV of the cine ED labels
(code 5: ACDC, M&Ms; added to LGE-registered targets where a subject has cine labels too). Why: real RVs
have dark, thin tips and fat beside them that an intensity rule misreads (the AHA anchor), and a model
trained on a site's RV labels sees the RV as its experts drew it.
Validation adds ``rv_dice``; ``best_model.pth``'s facts count the subjects it learnt the RV from
(``rv_subjects``), and inference uses the RV only when that is not 0 (``split_rv``: the RV is background
in every output).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mi_pipeline import fsio
from mi_pipeline.config import Config
from mi_pipeline.data.cache import RV_CODE, Subject, SubjectStore, lge_available
from mi_pipeline.data.rows import DiskRows
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.engine.runlog import StageLog, progress
from mi_pipeline.engine.task import Batch, TrainTask
from mi_pipeline.layout import RunLayout
from mi_pipeline.metrics import dice
from mi_pipeline.stages import (
    common,
    motion,
    registration,
    registration_qa,
    seg_confidence,
)
from mi_pipeline.stages.lazy import SplitSlices
from mi_pipeline.stages.monai_parts import DiceCELoss, UNet

NUM_CLASSES = 3  # 0 background (incl. LV cavity), 1 remote myocardium, 2 infarct: what every output shows
RV_CLASS = 3  # with ``learn_rv``: the RV blood pool, a 4th class (background in every output)
CLASS_OF_CODE = torch.tensor([0, 0, 1, 2, 2, 0], dtype=torch.long)  # cache label code -> class (5 = RV -> background)
CLASS_OF_CODE_RV = torch.tensor([0, 0, 1, 2, 2, RV_CLASS], dtype=torch.long)  # ``learn_rv``: 5 = RV -> its class
MOTION_SCALE = 0.25  # displacement pixels -> network input units
VAL_BATCH = 32


def in_channels(cfg: Config) -> int:
    return cfg.data.frames * (3 if cfg.segmentation.motion_features else 1)


def out_channels(cfg: Config) -> int:
    return NUM_CLASSES + (1 if cfg.segmentation.learn_rv else 0)


def build_model(cfg: Config) -> nn.Module:
    s = cfg.segmentation
    return UNet(spatial_dims=2, in_channels=in_channels(cfg), out_channels=out_channels(cfg), channels=s.channels,
                strides=(2,) * (len(s.channels) - 1), num_res_units=s.num_res_units)


def to_classes(labels: torch.Tensor, rv: bool = False) -> torch.Tensor:
    """Cache label codes (0 bg, 1 cavity, 2 myo, 3 infarct, 5 RV) -> segmentation classes (0, 0, 1, 2, 0;
    the RV ``RV_CLASS`` with ``rv``)."""
    table = CLASS_OF_CODE_RV if rv else CLASS_OF_CODE
    return table.to(labels.device)[labels.long()]


def without_rv(classes: torch.Tensor) -> torch.Tensor:
    """Classes with the RV as background: what the myocardium and infarct are read from."""
    return torch.where(classes == RV_CLASS, torch.zeros_like(classes), classes)


def with_cine_rv(classes: torch.Tensor, cine_ed_labels: torch.Tensor) -> torch.Tensor:
    """LGE-registered classes with the RV of the subject's cine ED labels where they leave background: the
    RV is drawn on the cine, and LGE labels (0..4) never mark it, so this is where an LGE-supervised model
    learns it (a site with both cine contours and LGE scar labels)."""
    rv = (cine_ed_labels.to(classes.device) == RV_CODE) & (classes == 0)
    return torch.where(rv, torch.full_like(classes, RV_CLASS), classes)


def split_rv(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A softmax (N, C, H, W) as every output reads it -- background / myocardium / infarct, the RV's
    probability added to background's, as a model without the RV class would call it -- and where the
    model calls the RV (N, H, W) bool: the RV class wins the argmax. (probs, None) for a 3-class model."""
    if probs.shape[1] == NUM_CLASSES:
        return probs, None
    rv = probs.argmax(dim=1) == RV_CLASS
    merged = probs[:, :NUM_CLASSES].clone()
    merged[:, 0] += probs[:, RV_CLASS]
    return merged, rv


class MyocardiumOnly(nn.Module):
    """A segmentation model trained without LGE (cine labels only), as inference must use it: its
    infarct class never saw a label, so whatever it scores is noise and all of it is myocardium. The
    two probabilities are summed into the myocardium (logsumexp of the logits) and the infarct class
    is never chosen; the reports say the infarct was not estimated (``clinical.trust``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        merged = logits.clone()
        merged[:, 1] = torch.logsumexp(logits[:, 1:3], dim=1)
        merged[:, 2] = float("-inf")
        return merged


def segmentation_inputs(cine: torch.Tensor, fields: torch.Tensor | None) -> torch.Tensor:
    """Network input (N, C, H, W) for stacked cine slices (N, T, H, W) and their ED->frame motion fields
    (N, T, 2, H, W, from ``motion.motion_fields``); ``fields`` None = frames only. Training and
    inference both build their input here."""
    if fields is None:
        return cine.float()
    n, t, _, h, w = fields.shape
    return torch.cat([cine.float(), fields.reshape(n, 2 * t, h, w) * MOTION_SCALE], dim=1)


def _flip_inputs(x: torch.Tensor, frames: int, flip_h: bool, flip_w: bool) -> torch.Tensor:
    """Flip one sample (C, H, W): image channels spatially, motion-field channel pairs as vectors."""
    images = common.flip_image(x[:frames], flip_h, flip_w)
    if x.shape[0] == frames:
        return images
    h, w = x.shape[-2:]
    fields = common.flip_field(x[frames:].reshape(-1, 2, h, w), flip_h, flip_w).reshape(-1, h, w)
    return torch.cat([images, fields])


def _log_uniform(n: int, limit: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` factors log-uniform in [1/limit, limit]: the draw every random intensity or size change uses."""
    return torch.exp((2 * torch.rand(n, generator=generator) - 1) * float(np.log(limit)))


def _zoom(x: torch.Tensor, y: torch.Tensor, frames: int, limit: float, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom each sample (x: N, C, H, W; y: N, H, W classes) about its centre by a factor log-uniform in
    [1/limit, limit]: images bilinear, zero outside; motion-field channels resampled the same way and
    multiplied by the factor (pixel displacements grow with the zoom); labels nearest."""
    n = x.shape[0]
    zoom = _log_uniform(n, limit, generator)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out[:, frames:] *= zoom.view(-1, 1, 1, 1)
    labels = nn.functional.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                       align_corners=False)
    return out, labels[:, 0].round().to(y.dtype)


def _gamma_inputs(x: torch.Tensor, frames: int, limit: float, generator: torch.Generator) -> torch.Tensor:
    """Raise each sample's cine frames (N, C, H, W; the first ``frames`` channels, normalised to [0, 1])
    to a gamma log-uniform in [1/limit, limit]: blood / myocardium contrast varies between scanners and
    sequences, and the infarct is read from the myocardium's look as well as its motion."""
    gamma = _log_uniform(x.shape[0], limit, generator)
    images = x[:, :frames].clamp(min=0.0).pow(gamma.view(-1, 1, 1, 1))
    return torch.cat([images, x[:, frames:]], dim=1)


class SegmentationTask(TrainTask):
    name = "segmentation"
    metric_name = "infarct_dice"
    higher_is_better = True

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        s = cfg.segmentation
        self.criterion = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=s.dice_weight, lambda_ce=s.ce_weight)
        self._fingerprints: dict[str, str] | None = None
        self.suffix = ""  # "_vs_registered" when validation has no cine labels (setup decides)
        self.myocardium_only = lge_available(cfg, self.run_dir) is False  # no LGE: cine ED labels are the targets
        self.learn_rv = s.learn_rv
        self.rv_subjects = 0  # supervising subjects whose targets mark the RV (setup counts them)
        if self.myocardium_only:
            self.metric_name = "myo_dice"  # no infarct to score: the myocardium's overlap picks the best epoch

    def _upstream_paths(self) -> dict[str, Path]:
        layout = RunLayout(self.run_dir)
        paths = {} if self.myocardium_only else {"registration": layout.best("registration")}
        if self.cfg.segmentation.motion_features:
            paths["motion"] = layout.best("motion")
        return paths

    def setup(self, device: torch.device) -> None:
        cfg = self.cfg
        multiple = max(2 ** (len(cfg.segmentation.channels) - 1), 2 ** cfg.registration.levels)

        def check(subject: Subject) -> None:
            if self.myocardium_only:
                common.require_cine_labels([subject], "segmentation (myocardium only: the data has no LGE)")
            else:
                common.require_lge([subject], "segmentation")
            common.check_frames([subject], cfg.data.frames, where="segmentation")
            common.check_size([subject], multiple, where="segmentation")

        # subjects are read one at a time; the inputs built from them wait on disk (data/rows.py)
        store = SubjectStore(self.run_dir, cfg.data.cache_budget_mb)  # one budget for both splits
        train = SplitSlices(store, "train", check, where="segmentation")
        val = SplitSlices(store, "val", check, where="segmentation")
        paths = self._upstream_paths()
        self._fingerprints = {stage: ckpt.file_fingerprint(p) for stage, p in paths.items() if p.exists()}
        reg_model = (common.load_frozen(registration.build_model(cfg), paths["registration"], "registration", device)[0]
                     if "registration" in paths else None)
        motion_model = (common.load_frozen(motion.build_model(cfg), paths["motion"], "motion", device)[0]
                        if "motion" in paths else None)
        self.train_x, self.train_y, train_qa = self._prepare(train, motion_model, reg_model, "train")
        self.val_x, registered, val_qa = self._prepare(val, motion_model, reg_model, "val")
        self._supervise(train, train_qa)
        self.registration_qa = None if self.myocardium_only else {  # no LGE: no registration, no QA
            "train": [q.as_dict() for q in train_qa], "val": [q.as_dict() for q in val_qa],
            "summary_train": registration_qa.summary(train_qa), "summary_val": registration_qa.summary(val_qa),
            "supervising_subjects": self.supervising}
        self.labels_available = val.has("cine_label")
        if self.labels_available:
            self.val_truth = torch.cat([to_classes(torch.from_numpy(s.cine_label[:, 0]), self.learn_rv).to(torch.uint8)
                                        for s in val.subjects()])
        else:  # honest names: these are overlaps with registered LGE labels, not with the truth
            self.val_truth = registered
            self.suffix = "_vs_registered"
            self.metric_name = "infarct_dice" + self.suffix
        self.val_owner = torch.from_numpy(val.owner)
        self.val_subjects = len(val.ids)
        # what predict's plausibility flag compares with: the shape of the targets training sees
        rows = seg_confidence.shape_figures(without_rv(self.train_y).numpy(), train.spacing[self.train_rows.numpy()])
        self.target_shape = {"ranges": seg_confidence.reference_ranges(rows), "slices": len(rows)}
        if int(os.environ.get("RANK", "0")) == 0:  # one writer under data parallel
            if self.registration_qa is not None:
                fsio.atomic_write_text(self.qa_path, json.dumps(self.registration_qa, indent=1) + "\n")
            fsio.atomic_write_text(self.qa_path.with_name(seg_confidence.SHAPE_FILE),
                                   json.dumps(self.target_shape, indent=1) + "\n")

    @property
    def qa_path(self) -> Path:
        """Where the registration QA behind this run's training targets is recorded."""
        return RunLayout(self.run_dir).log_dir(self.name) / "registration_qa.json"

    def notes(self) -> list[str]:
        return self._target_notes() + self._rv_notes()

    def _target_notes(self) -> list[str]:
        if self.registration_qa is None:
            return [f"targets: the cine ED labels of {len(self.supervising)} training subject(s); the data has no "
                    f"LGE images, so the model learns the myocardium only (its infarct class sees no positive) "
                    f"and the best epoch is chosen by {self.metric_name}"]
        t, v = self.registration_qa["summary_train"], self.registration_qa["summary_val"]
        chosen = ", ".join(f"{c} {n}" for c, n in t["chosen"].items())
        return [f"registration QA (training targets): {chosen}; {len(self.supervising)}/{t['subjects']} "
                f"subjects confident enough to supervise; validation targets: "
                + ", ".join(f"{c} {n}" for c, n in v["chosen"].items()) + f"; details in {self.qa_path}"]

    def _rv_notes(self) -> list[str]:
        if not self.learn_rv:
            return []
        if not self.rv_subjects:
            return ["learn_rv: no training target marks the RV (label code 5), so the RV class learns nothing; "
                    "predict finds the RV insertion points in the images instead"]
        return [f"learn_rv: the RV class learns from the RV labels of {self.rv_subjects} of "
                f"{len(self.supervising)} training subject(s); predict numbers the AHA segments from the RV it finds"]

    def _prepare(self, slices: SplitSlices, motion_model: nn.Module | None, reg_model: nn.Module | None,
                 split: str) -> tuple[DiskRows, torch.Tensor, list[registration_qa.PairQA]]:
        """Network inputs (on disk, one row per slice), registered targets (uint8 classes) and the QA,
        built one subject at a time so memory holds one subject's work, not the split's (with progress:
        the QA's rigid search takes seconds per subject, before the first epoch). Without ``reg_model``
        (no LGE) the targets are the cine ED labels and there is no QA."""
        first = slices.store.get(slices.ids[0]).cine
        inputs = DiskRows(len(slices), (in_channels(self.cfg), *first.shape[-2:]), np.float32,
                          RunLayout(self.run_dir).ckpt_dir(self.name))
        targets, qa, start = [], [], 0
        log = StageLog(RunLayout(self.run_dir).log_dir(self.name), self.name,
                       files=int(os.environ.get("RANK", "0")) == 0).info
        what = f"registration QA ({split})" if reg_model is not None else f"cine label targets ({split})"
        for subject in progress(slices.subjects(), len(slices.ids), what, log, "subject(s)"):
            if reg_model is None:
                assert subject.cine_label is not None  # setup's check refused a subject without
                registered, records = torch.from_numpy(subject.cine_label[:, 0]), []
            else:
                registered, records = registration.register_subjects(self.cfg, reg_model, [subject])
            cine = torch.from_numpy(np.ascontiguousarray(subject.cine))
            fields = motion.motion_fields(motion_model, cine) if motion_model is not None else None
            inputs.write(start, segmentation_inputs(cine, fields).numpy())
            start += cine.shape[0]
            classes = to_classes(registered, self.learn_rv)
            if self.learn_rv and reg_model is not None and subject.cine_label is not None:
                classes = with_cine_rv(classes, torch.from_numpy(subject.cine_label[:, 0]))
            targets.append(classes.to(torch.uint8))
            qa += records
        return inputs, torch.cat(targets), qa

    def _supervise(self, slices: SplitSlices, qa: list[registration_qa.PairQA]) -> None:
        """Keep only the training slices of subjects whose registration the QA is confident about, so a
        misregistered target cannot teach a shifted myocardium. If no subject is confident, all supervise
        (and ``registration_qa.json`` says so) rather than training on nothing."""
        confident = [q.confident for q in qa] if qa else [True] * len(slices.ids)  # no QA: expert labels
        if not any(confident):
            confident = [True] * len(qa)
        keep = torch.tensor(confident, dtype=torch.bool)[torch.from_numpy(slices.owner)]
        self.train_rows = torch.nonzero(keep).squeeze(1)  # rows of train_x that supervise
        self.train_y = self.train_y[keep]
        self.supervising = [q.subject for q, c in zip(qa, confident) if c] if qa else list(slices.ids)
        with_rv = (self.train_y == RV_CLASS).flatten(1).any(dim=1)
        self.rv_subjects = len(set(torch.from_numpy(slices.owner)[self.train_rows][with_rv].tolist()))

    def upstream(self) -> dict[str, str]:
        if self._fingerprints is None:
            self._fingerprints = {s: ckpt.file_fingerprint(p) for s, p in self._upstream_paths().items() if p.exists()}
        return dict(self._fingerprints)

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def num_train_samples(self) -> int:
        return int(self.train_rows.shape[0])

    def make_batch(self, indices: list[int], generator: torch.Generator, device: torch.device) -> Batch:
        x, y = self.train_x[self.train_rows[indices]], self.train_y[indices].long()
        if self.cfg.segmentation.augment:
            flips = (torch.rand(len(indices), 2, generator=generator) < 0.5).tolist()
            frames = self.cfg.data.frames
            x = torch.stack([_flip_inputs(x[i], frames, fh, fw) for i, (fh, fw) in enumerate(flips)])
            y = torch.stack([common.flip_image(y[i], fh, fw) for i, (fh, fw) in enumerate(flips)])
        if self.cfg.segmentation.augment_scale > 1.0:  # drawn after the flips: batches without it are unchanged
            x, y = _zoom(x, y, self.cfg.data.frames, self.cfg.segmentation.augment_scale, generator)
        if self.cfg.segmentation.augment_gamma > 1.0:  # drawn after the flips: batches without it are unchanged
            x = _gamma_inputs(x, self.cfg.data.frames, self.cfg.segmentation.augment_gamma, generator)
        return {"image": x.to(device), "label": y.unsqueeze(1).to(device)}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = self.criterion(model(batch["image"]), batch["label"])
        return loss, {}

    def predict(self, model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        out = []
        for part in common.batched(x.shape[0], VAL_BATCH):
            out.append(model(x[part].to(device)).argmax(dim=1).cpu())
        return torch.cat(out)

    def model_facts(self) -> dict[str, object]:
        """What ``clinical.trust`` must know: a model trained without LGE never learnt the infarct."""
        return {"myocardium_only": self.myocardium_only,
                "targets": "cine ED labels" if self.myocardium_only else "LGE labels carried into cine space",
                "rv_subjects": self.rv_subjects}

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        pred = self.predict(model, self.val_x, device)
        infarct, myo, fp, size_err, rv = [], [], [], [], []
        for s in range(self.val_subjects):
            sel = self.val_owner == s
            p, t = pred[sel], self.val_truth[sel]
            p_myo, t_myo, p_inf, t_inf = (p == 1) | (p == 2), (t == 1) | (t == 2), p == 2, t == 2
            myo.append(dice(p_myo, t_myo))
            if bool((t == RV_CLASS).any()):
                rv.append(dice(p == RV_CLASS, t == RV_CLASS))
            p_pct = 100.0 * int(p_inf.sum()) / max(int(p_myo.sum()), 1)
            if bool(t_inf.any()):
                infarct.append(dice(p_inf, t_inf))
                size_err.append(abs(p_pct - 100.0 * int(t_inf.sum()) / max(int(t_myo.sum()), 1)))
            else:
                fp.append(p_pct)
        metrics = {"myo_dice": common.mean(myo), "labels_available": float(self.labels_available)}
        if rv:  # learn_rv, and validation labels that mark the RV
            metrics["rv_dice"] = common.mean(rv)
        if self.myocardium_only:  # no infarct learnt or labelled: only how much of the myocardium it calls infarct
            return {**metrics, "infarct_fp_percent": common.mean(fp)}
        if fp:
            metrics["infarct_fp_percent"] = common.mean(fp)
        if infarct:
            metrics["infarct_dice"] = common.mean(infarct)
            metrics["infarct_size_error"] = common.mean(size_err)
            metrics["infarct_dice_no_infarct_baseline"] = 0.0
        else:
            metrics["infarct_dice"] = 1.0 - metrics["infarct_fp_percent"] / 100.0
            metrics["infarct_dice_no_infarct_baseline"] = 1.0
        if self.suffix:
            metrics = {(k + self.suffix if k != "labels_available" else k): v for k, v in metrics.items()}
        return metrics

    def baseline_warning(self, metrics: dict[str, float]) -> str | None:
        if self.myocardium_only:  # predicting no infarct is all a myocardium-only model can do
            return None
        ours = metrics.get("infarct_dice" + self.suffix)
        base = metrics.get("infarct_dice_no_infarct_baseline" + self.suffix)
        if ours is not None and base is not None and ours <= base:
            return (f"segmentation does not beat its trivial baseline (predict no infarct): infarct_dice{self.suffix} "
                    f"{ours:.3f} <= {base:.3f}")
        return None
