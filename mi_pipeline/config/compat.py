"""The config's shims for files written by earlier versions (see ``mi_pipeline/compat.py`` for the table).

``AMP_FROM_BOOL``: configs and checkpoints of 0.1.0 wrote ``amp: true/false``; they read as fp16/off.
``HASHED_WHEN_CHANGED``: keys added after 0.1.0 count in a stage's hash only when set to something
other than their default, so a run started before they existed still resumes (its checkpoints'
hashes still match).
"""

from __future__ import annotations

AMP_FROM_BOOL: dict[bool, str] = {False: "off", True: "fp16"}

HASHED_WHEN_CHANGED: tuple[str, ...] = (
    "data.phantom.cine_labels", "data.phantom.vary", "data.phantom.slices_range", "data.phantom.frames_range",
    "data.phantom.spacing_range_mm", "data.phantom.fov_range_mm", "data.phantom.slice_thickness_range_mm",
    "data.phantom.lge_spacing_range_mm", "data.phantom.heart_offset_mm", "data.phantom.breath_hold_shift_mm",
    "data.phantom.breath_hold_rotation_deg", "data.phantom.lge_slice_offset", "data.phantom.lge_remote_signal",
    "data.phantom.lge_fat_signal", "data.phantom.noise_range", "registration.qa_max_shift_mm",
    "registration.qa_max_rotation_deg", "registration.qa_margin", "registration.qa_max_folding_percent",
    "registration.qa_min_agreement", "data.exclude", "data.on_bad_subject",
    "motion.label_dice_weight", "motion.best_window", "registration.best_window", "segmentation.best_window",
    "segmentation.augment_gamma", "motion.ema_decay", "registration.ema_decay", "segmentation.ema_decay",
    "segmentation.learn_rv", "data.phantom.rv_label", "segmentation.augment_scale", "motion.fold_weight",
    "data.phantom.papillary_muscles",
)
