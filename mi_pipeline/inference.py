"""Inference from a cine alone: the library behind ``python -m mi_pipeline.predict`` and ``evaluate``.

For each cine (a 4D NIfTI X x Y x slices x frames; a folder may hold several ``*.nii.gz`` files or
generic-layout subject folders with ``cine.nii.gz``), writes ``DIR/<subject>/``:

* ``infarct_seg.nii.gz``: 0 background, 1 myocardium, 2 infarct, on the cine's own grid (the shape
  and affine of one cine frame), from the ED frame;
* ``report.json``: infarct % of LV myocardium, per slice, per AHA segment, the ED/ES frames used,
  checkpoint fingerprints and the config hash;
* ``qc.png``: cine at ED and ES, motion magnitude, infarct overlay (basal, mid, apical rows).

The cine is read and preprocessed by the same code as training (``data.nifti``, ``data.preprocess``:
LV found by ``lv_center_heuristic``, resampled, cropped, normalised); the models are rebuilt from the
config by the stage registry (``stages/registry.py``) and fed by ``segmentation_inputs``; every label is
the argmax of the softmax averaged over the input as it is and flipped along H, W and both (test-time
augmentation with training's flips, ``seg_confidence.flip_softmax``), in evaluate and predict alike; predict
reads its uncertainty figures from the same passes.
Models come from ``--run-dir`` (``checkpoints/<stage>/best_model.pth``) or ``--checkpoints DIR``
(the same ``<stage>/best_model.pth`` layout). Without ``--config`` the config stored in the
segmentation checkpoint is used.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from mi_pipeline import config as config_mod
from mi_pipeline import ensemble, metrics
from mi_pipeline.clinical import io as clinical_io
from mi_pipeline.clinical import trust
from mi_pipeline.config import Config
from mi_pipeline.data import folds as fold_split
from mi_pipeline.data.cache import Subject
from mi_pipeline.data.generic import RawSubject
from mi_pipeline.data.localise import LvLocation
from mi_pipeline.data.localise import describe as describe_location
from mi_pipeline.data.nifti import load_image
from mi_pipeline.data.preprocess import (
    CROP_MARGIN_MM,
    clear_half_width_px,
    estimate_ed,
    locate,
    on_outer_ring,
    preprocess_subject,
    sample,
)
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.errors import CheckpointError, ConfigError, InputError
from mi_pipeline.fsio import atomic_path, atomic_write_text
from mi_pipeline.layout import RunLayout
from mi_pipeline.stages import motion, registry, seg_confidence, segmentation

CROP_GROWTH = 1.3  # each regrown crop 1.3x as wide: once held ACDC 038 and 057 (walls 9 and 25 mm past the margin)
CROP_GROWTHS = 2
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


# --- models ---------------------------------------------------------------------------------------


@dataclass
class Models:
    cfg: Config
    motion: nn.Module | None = None
    registration: nn.Module | None = None
    segmentation: nn.Module | None = None
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    rv_learnt: bool = False  # segmentation learnt the RV (``learn_rv`` with RV labels): it anchors the AHA segments
    # A k-fold ensemble: its members, one per fold. The fields above are then fold 0's,
    # used where one model must answer (the TTA confidence, the QC figure's motion).
    folds: list[Models] = field(default_factory=list)


def stored_config(ckpt_root: Path, stage: str = "segmentation") -> Config:
    """The config a stage was trained with, as its ``best_model.pth`` records it."""
    path = registry.best_path(ckpt_root, stage)
    payload = ckpt.load_checkpoint(path, required=("model", "config"))
    try:
        return config_mod.from_dict(payload["config"], source=f"{path} (stored config)")
    except ConfigError as exc:
        raise ConfigError(f"{exc}; pass --config") from None


def load_models(cfg: Config, ckpt_root: Path, stages: tuple[str, ...], device: torch.device) -> Models:
    """The trained models named in ``stages`` (best weights, eval mode), with their checkpoint details."""
    models = Models(cfg=cfg)
    for stage in stages:
        model, info = registry.load_best(cfg, ckpt_root, stage, device)
        if stage == "segmentation":
            provenance = trust.model_provenance(info)
            models.rv_learnt = bool(provenance.get("rv_subjects"))
            if provenance["myocardium_only"]:
                model = segmentation.MyocardiumOnly(model)
        setattr(models, stage, model)
        models.checkpoints[stage] = info
    return models


def fold_checkpoints(run_dir: Path, stages: tuple[str, ...] = ("segmentation",)) -> list[Path]:
    """The ``checkpoints`` folders of a k-fold run's folds ([] for a run without folds).

    Every fold must have its models: an ensemble of the folds that happen to be finished would
    quietly be another model than the one the user cross-validated.
    """
    layout = RunLayout(Path(run_dir))
    roots = [RunLayout(root).checkpoints for root in fold_split.fold_roots(layout.root)]
    for extra in fold_split.unlisted_folders(layout.root):
        print(f"warning: {extra}: not one of the {len(roots)} folds of {fold_split.folds_path(layout.root)}; "
              f"ignored", file=sys.stderr)
    gone = [root.parent for root in roots if not root.parent.is_dir()]
    if gone:
        raise CheckpointError(f"{gone[0]}: missing, but {fold_split.folds_path(layout.root)} lists fold "
                              f"{gone[0].name}: restore it, retrain it (submit --mode resume), or choose one fold "
                              f"with --fold k")
    missing = [(root, stage) for root in roots for stage in stages if not registry.best_path(root, stage).is_file()]
    if missing:
        root, stage = missing[0]
        folds = sorted({int(r.parent.name) for r, _ in missing})
        raise CheckpointError(f"{registry.best_path(root, stage)}: missing; fold(s) {', '.join(map(str, folds))} are "
                              f"not trained, so there is no {len(roots)}-fold ensemble yet: finish them "
                              f"(submit --mode resume) or choose one fold with --fold k")
    return roots


def load_ensemble(cfg: Config, fold_ckpt_roots: list[Path], stages: tuple[str, ...], device: torch.device) -> Models:
    """Every fold's models as one ensemble (see ``Models.folds``)."""
    members = [load_models(cfg, root, stages, device) for root in fold_ckpt_roots]
    first = members[0]
    return Models(cfg=cfg, motion=first.motion, registration=first.registration, segmentation=first.segmentation,
                  checkpoints=first.checkpoints, rv_learnt=all(m.rv_learnt for m in members), folds=members)


def inference_device(cfg: Config) -> torch.device:
    """CUDA when the config allows it and one is visible, else CPU (inference never needs a GPU)."""
    return torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")


def segment_subject(models: Models, subject: Subject) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted classes (Z, H, W) uint8 on the crop grid and the ED->frame fields (Z, T, 2, H, W) or None.

    The argmax of the flip-averaged softmax; for an ensemble, of the folds' mean of it (fields: fold 0's).
    """
    segmented = segment_with_passes(models, subject)
    return segmented.label, segmented.fields


class Segmented(NamedTuple):
    """One subject segmented on its crop grid, and what the label came from."""

    agreement: ensemble.FoldAgreement | None  # an ensemble's folds' agreement (None: a single model)
    label: np.ndarray  # (Z, H, W) uint8: 0 background, 1 myocardium, 2 infarct
    fields: np.ndarray | None  # the ED->frame motion fields (Z, T, 2, H, W), or None
    passes: list[torch.Tensor] | None  # a single model's flip passes (predict's confidence figures), or None
    rv: np.ndarray | None  # (Z, H, W) bool, where the model calls the RV (``Models.rv_learnt``), or None


def segment_with_passes(models: Models, subject: Subject) -> Segmented:
    """``segment_subject``, and what the label came from: the folds' agreement (an ensemble) or a single
    model's four flip passes, which predict's confidence figures are read from (not from four more)."""
    if models.folds:
        agreement, fields, rv = segment_ensemble(models, subject)
        return Segmented(agreement, agreement.label, fields, None, rv)
    passes, fields, rv = _flip_passes(models, subject)
    return Segmented(None, seg_confidence.average(passes).argmax(dim=1).numpy().astype(np.uint8), fields, passes, rv)


def segment_probabilities(models: Models, subject: Subject
                          ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One model set's softmax (Z, C, H, W) float32 on the crop grid, its motion fields and its RV (or None)."""
    passes, fields, rv = _flip_passes(models, subject)
    return seg_confidence.average(passes).numpy().astype(np.float32), fields, rv


def _flip_passes(models: Models, subject: Subject
                 ) -> tuple[list[torch.Tensor], np.ndarray | None, np.ndarray | None]:
    """The segmentation softmax of the input as it is and flipped along H, W and both
    (``seg_confidence.flip_softmax``, the flips training augments with), the motion fields, and where the
    model calls the RV (argmax of the passes' average; None unless ``models.rv_learnt``): every label is the
    argmax of the passes' average, in evaluate and predict alike."""
    cine = torch.from_numpy(np.ascontiguousarray(subject.cine))
    fields = motion.motion_fields(models.motion, cine) if models.motion is not None else None
    x = segmentation.segmentation_inputs(cine, fields if models.cfg.segmentation.motion_features else None)
    passes = seg_confidence.flip_softmax(models.segmentation, x, cine.shape[1], segmentation.VAL_BATCH)
    rv = segmentation.split_rv(seg_confidence.average(passes))[1] if models.rv_learnt else None
    passes = [segmentation.split_rv(p)[0] for p in passes]
    return passes, (fields.numpy() if fields is not None else None), (rv.numpy() if rv is not None else None)


def fold_probabilities(models: Models, subject: Subject) -> np.ndarray:
    """Each fold's softmax for one subject, (K, Z, C, H, W)."""
    return np.stack([segment_probabilities(member, subject)[0] for member in models.folds])


def segment_ensemble(models: Models, subject: Subject
                     ) -> tuple[ensemble.FoldAgreement, np.ndarray | None, np.ndarray | None]:
    """What the folds agree on for one subject, fold 0's motion fields (computed once, with its softmax), and
    the RV where most folds call it (None unless every fold learnt it)."""
    outputs = [segment_probabilities(member, subject) for member in models.folds]
    rvs = [rv for _, _, rv in outputs if rv is not None]
    rv = np.mean(rvs, axis=0) > 0.5 if len(rvs) == len(outputs) else None
    return ensemble.agree(np.stack([probs for probs, _, _ in outputs])), outputs[0][1], rv


# --- input ------------------------------------------------------------------------------------------


def find_cines(path: Path) -> list[tuple[str, Path]]:
    """(subject id, cine file) for a file or a folder of cines; InputError when there is none."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found")
    if path.is_file():
        return [(_subject_name(path), path)]
    dicom_found = clinical_io.find_dicom_cines(path)  # DICOM series folders
    if dicom_found:
        return dicom_found
    found: list[tuple[str, Path]] = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.endswith((".nii.gz", ".nii")):
            found.append((_subject_name(entry), entry))
        elif entry.is_dir() and (entry / "cine.nii.gz").is_file():
            found.append((_subject_name(entry / "cine.nii.gz"), entry / "cine.nii.gz"))
    if not found:
        raise InputError(f"{path}: folder holds no cine (*.nii.gz files or <subject>/cine.nii.gz)")
    names = [n for n, _ in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{path}: several cines map to subject {dupes[0]!r}")
    return found


def _subject_name(cine: Path) -> str:
    name = cine.name
    for suffix in (".nii.gz", ".nii"):
        name = name.removesuffix(suffix)
    if name in ("cine", "sa", "4d") or not name:
        name = cine.parent.name
    return _SAFE.sub("_", name).strip("._-") or "subject"


def read_cine(path: Path, subject_id: str, ed: int | None = None, series: str | None = None) -> RawSubject:
    """A cine-only RawSubject from a 4D NIfTI (validated as in training) or a DICOM folder (``series`` picks one);
    ``ed`` None = from the DICOM trigger times when there are some, else from the images."""
    stack = clinical_io.read_dicom_cine(path, series) if Path(path).is_dir() else None  # a DICOM series folder
    if stack is not None:
        cine, affine = stack.array, stack.affine
    else:
        cine, affine = load_image(path, ndim=4, what="cine (X x Y x slices x frames)", min_frames=2)
    ed_method = "given"
    if ed is None and stack is not None and clinical_io.ed_from_trigger_times(stack) is not None:
        ed, ed_method = clinical_io.ed_from_trigger_times(stack)  # type: ignore[misc]
    if ed is None:
        sp = np.linalg.norm(affine[:3, :3], axis=0)
        ed, ed_method = estimate_ed(cine, (float(sp[0]), float(sp[1]))), "image (end of diastasis before ES)"
    if not 0 <= ed < cine.shape[3]:
        raise InputError(f"{path}: --ed {ed} out of range for a cine with {cine.shape[3]} frames")
    raw = RawSubject(id=subject_id, folder=path.parent, cine=cine, cine_affine=affine, lge=None, lge_affine=None,
                     lge_label=None, ed=ed, cine_path=path, ed_method=ed_method, dicom_stack=stack)
    return raw


def to_cine_grid(pred: np.ndarray, crop_affine: np.ndarray, cine_affine: np.ndarray,
                 shape: tuple[int, int, int], order: int = 0) -> np.ndarray:
    """Crop-grid values (Z, H, W) -> the cine's own (X, Y, Z) grid, 0 outside; classes (uint8) nearest
    neighbour, a float map (``order`` 1) linearly."""
    values, _ = sample(np.ascontiguousarray(pred.transpose(1, 2, 0)), crop_affine, cine_affine, shape, order=order)
    return values.astype(pred.dtype)


def save_nifti(values: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """An image on the cine's grid, written atomically with the cine's affine as qform and sform."""
    img = nib.Nifti1Image(values, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp) + ".nii.gz")
        Path(str(tmp) + ".nii.gz").replace(tmp)


# --- report -----------------------------------------------------------------------------------------


def build_report(subject_id: str, cine_path: Path, subject: Subject, raw: RawSubject, pred: np.ndarray,
                 models: Models, cfg: Config) -> dict[str, Any]:
    myo, inf = pred > 0, pred == 2
    levels = metrics.level_of_slices(myo)
    voxel_ml = float(np.prod(subject.spacing)) / 1000.0
    per_slice = []
    for k in range(pred.shape[0]):
        per_slice.append({"slice": k, "level": levels[k], "myocardium_px": int(myo[k].sum()),
                          "infarct_px": int(inf[k].sum()),
                          "infarct_percent": round(metrics.infarct_percent(myo[k], inf[k]), 2)})
    segments = metrics.aha_segment_map(myo)
    extents = metrics.segment_extents(segments, myo, inf)
    level_of = {}
    for name, n, first in metrics.AHA_LEVELS:
        for s in range(first, first + n):
            level_of[s] = name
    aha = {str(s): {"level": level_of[s], "extent_percent": (round(100 * e, 2) if e is not None else None),
                    "infarcted": (e is not None and e >= metrics.INFARCT_SEGMENT_THRESHOLD)}
           for s, e in extents.items()}
    nt, n_out = raw.cine.shape[3], subject.cine.shape[1]
    es_source = (raw.ed + subject.es * nt / n_out) % nt
    return {
        "subject": subject_id,
        "cine": str(cine_path),
        "infarct_percent": round(metrics.infarct_percent(myo, inf), 2),
        "myocardium_ml": round(float(myo.sum()) * voxel_ml, 2),
        "infarct_ml": round(float(inf.sum()) * voxel_ml, 2),
        "frames": {"ed": int(raw.ed), "ed_method": raw.ed_method, "es": int(round(es_source)) % nt,
                   "es_exact": round(float(es_source), 3),
                   "source_frames": int(nt), "kept_frames": int(n_out), "es_index_kept": int(subject.es),
                   "es_method": "info" if raw.es is not None else "image (least bright blood pool)"},
        "per_slice": per_slice,
        "aha_segments": aha,
        "aha_note": "segments: 6/6/4 sectors at basal/mid/apical thirds of the slices with myocardium, fixed "
                    "orientation on the canonical crop grid (not anchored to RV insertion points)",
        "infarct_segment_threshold_percent": 100 * metrics.INFARCT_SEGMENT_THRESHOLD,
        "spacing_mm": list(subject.spacing),
        "checkpoints": models.checkpoints,
        "config_hash": config_mod.stage_hash(cfg, "segmentation"),
    }


def segmentation_confidence(models: Models, subject: Subject, pred: np.ndarray,
                            passes: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """TTA uncertainty and a plausibility flag for ``pred`` (see ``stages/seg_confidence``), from the flip
    ``passes`` ``pred`` came from, or from ``models``' own passes (an ensemble: fold 0's)."""
    if passes is None:
        passes = _flip_passes(models, subject)[0]
    _, uncertainty = seg_confidence.tta_figures(passes)
    shape_file = RunLayout.holding(models.checkpoints["segmentation"]["path"]).log_dir("segmentation") / \
        seg_confidence.SHAPE_FILE
    ranges, source = seg_confidence.DEFAULT_RANGES, "physiological defaults (no training targets' shape record)"
    if shape_file.is_file():
        ranges = {k: tuple(v) for k, v in json.loads(shape_file.read_text())["ranges"].items()}
        source = f"training targets ({shape_file})"
    rows = seg_confidence.shape_figures(pred, float(subject.spacing[0]))
    return {"uncertainty": uncertainty, "plausibility": seg_confidence.plausibility(rows, ranges, source)}


def _qc_slices(levels: list[str | None], pred: np.ndarray) -> list[int]:
    """The QC figure's rows: the most basal slice, the middle mid slice and the middle apical one."""
    chosen = []
    for name in ("basal", "mid", "apical"):
        ks = [k for k, lv in enumerate(levels) if lv == name]
        if ks:
            chosen.append(_most_basal(ks, levels) if name == "basal" else ks[len(ks) // 2])
    return chosen or [pred.shape[0] // 2]


def _most_basal(basal: list[int], levels: list[str | None]) -> int:
    """The basal slice furthest from the apex (``level_of_slices`` may number the stack either way)."""
    apical = [k for k, lv in enumerate(levels) if lv in ("mid", "apical")]
    if not apical:
        return basal[0]
    return max(basal, key=lambda k: abs(k - float(np.mean(apical))))


def predict_one(subject_id: str, cine_path: Path, out_dir: Path, models: Models, cfg: Config,
                ed: int | None = None, series: str | None = None) -> dict[str, Any]:
    raw = read_cine(cine_path, subject_id, ed=ed, series=series)
    found = locate(raw)  # the LV the crop is centred on, reported with how it was found
    if cfg.data.crop % 16:
        raise ConfigError(f"data.crop {cfg.data.crop} must be a multiple of 16")
    crop = crop_holding_heart(raw, cfg, found, lambda subject: segment_with_passes(models, subject))
    subject, (agreement, pred, fields, passes, rv) = crop.subject, crop.result
    seg = to_cine_grid(pred, subject.affine, raw.cine_affine, raw.cine.shape[:3])
    folder = out_dir / subject_id
    folder.mkdir(parents=True, exist_ok=True)
    save_nifti(seg, raw.cine_affine, folder / "infarct_seg.nii.gz")
    report = build_report(subject_id, cine_path, subject, raw, pred, models, cfg)
    report["confidence"] = segmentation_confidence(models, subject, pred, passes)
    report["trust"] = trust_section(models, cine_path, raw, report["confidence"]["plausibility"])
    report["localisation"] = {**describe_location(found), "crop_mm": round(crop.width_mm, 1), "crop_grown": crop.grown}
    report["warnings"] = crop.warnings()
    # RV-anchored AHA segments, schema version; then the matplotlib figures (clinical_io); the DICOM SEG last
    report = clinical_io.finish_report(report, subject, raw, pred, seg, folder, rv=rv)
    if agreement is not None:  # the folds' interval and disagreement map beside the segmentation
        save_nifti(to_cine_grid(agreement.uncertainty, subject.affine, raw.cine_affine, raw.cine.shape[:3], order=1),
                   raw.cine_affine, folder / ensemble.UNCERTAINTY_FILE)
        report["ensemble"] = {**agreement.summary(), "checkpoints": [m.checkpoints for m in models.folds]}
        report["confidence"]["uncertainty"]["method"] += " (fold 0's models; the folds' disagreement is in ensemble)"
        report["outputs"]["uncertainty_nifti"] = ensemble.UNCERTAINTY_FILE
    if report["trust"]["not_a_measurement"]:
        report["warnings"].append(report["trust"]["line"])
    atomic_write_text(folder / "report.json", json.dumps(report, indent=1) + "\n")
    clinical_io.write_figures(folder, report, subject, fields, pred,
                              _qc_slices(metrics.level_of_slices(pred > 0), pred),
                              uncertainty=agreement.uncertainty if agreement is not None else None)
    return clinical_io.add_dicom_seg(report, raw, seg, folder)  # last: optional, a warning when it cannot be made


@dataclass(frozen=True)
class HeartCrop:
    """The crop predict segmented in, what it segmented there, and how often the crop had to grow."""

    subject: Subject
    result: Segmented
    grown: int
    still_cut: bool

    @property
    def width_mm(self) -> float:
        return float(self.subject.spacing[0]) * self.subject.cine.shape[-1]

    def warnings(self) -> list[str]:
        if self.still_cut:
            return [f"the segmented myocardium still reaches the crop border after the crop grew {self.grown} "
                    f"time(s) (to {self.width_mm:.0f} mm): part of the heart may lie outside it and is not measured"]
        if self.grown:
            return [f"crop grown {self.grown} time(s), to {self.width_mm:.0f} mm: the segmented myocardium reached "
                    f"the border of the crop sized from the blood pool"]
        return []


def crop_holding_heart(raw: RawSubject, cfg: Config, found: LvLocation,
                       segment: Callable[[Subject], Segmented]) -> HeartCrop:
    """Crop around the LV found and segment there; while the segmented wall reaches the crop's outer ring
    (``_wall_reaches_border``), crop ``CROP_GROWTH`` times wider and segment again (at most ``CROP_GROWTHS`` times).

    Why: the crop is sized from the LV blood pool plus a margin for the wall (``preprocess.crop_spacing``),
    and real walls are up to ~30 mm thick or reach past the pool on slices the pool was not found on
    (hypertrophied hearts, a basal slice: ACDC patient038 and 057 needed 9 and 25 mm more than the margin).
    The segmentation is the first look at the wall itself, so it checks the crop it was made in.
    """
    size, grown = found, 0
    while True:
        subject = preprocess_subject(raw, cfg.data, found=size)
        result = segment(subject)
        cut = _wall_reaches_border(result.label, float(subject.spacing[0]))
        if not cut or grown == CROP_GROWTHS:
            return HeartCrop(subject, result, grown, still_cut=cut)
        half_width = float(subject.spacing[0]) * clear_half_width_px(cfg.data.crop)  # what the crop holds now
        size = replace(found, radius_mm=CROP_GROWTH * half_width - CROP_MARGIN_MM)
        grown += 1


def _wall_reaches_border(pred: np.ndarray, spacing_mm: float) -> bool:
    """Whether the heart's wall in ``pred`` (Z, H, W) reaches the crop's outer ring: its largest connected
    piece does, and some slice shows a closed myocardial ring. Why both: a segmentation that is no heart
    (a phantom-trained model on a real cine: stray blobs, open arcs) would grow the crop for nothing --
    on 4 of 12 real ACDC cines whose labelled wall fitted, before the ring was asked for."""
    pieces, count = ndimage.label(pred > 0)
    if count == 0:
        return False
    wall = pieces == 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
    return on_outer_ring(wall) and any(r["closed_ring"] for r in seg_confidence.shape_figures(pred, spacing_mm))


def trust_section(models: Models, cine_path: Path, raw: RawSubject, plausibility: dict[str, Any]) -> dict[str, Any]:
    """report.json's ``trust``: the model's provenance and the verdict every output repeats (``clinical.trust``)."""
    provenance = trust.model_provenance(models.checkpoints["segmentation"], folds=len(models.folds))
    return trust.verdict(provenance, trust.input_from_phantom(cine_path, raw.dicom_stack), plausibility)
