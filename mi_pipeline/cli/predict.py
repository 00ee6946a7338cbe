"""Infarct from a cine alone: segmentation, report.json and a QC picture per subject.

``python -m mi_pipeline.predict --cine FILE.nii.gz|FOLDER --out DIR [--run-dir RUN | --checkpoints DIR]``
writes ``DIR/<subject>/infarct_seg.nii.gz``, ``report.json`` and ``qc.png`` (see ``mi_pipeline/inference.py``).
On a k-fold run the folds' models are ensembled and ``infarct_uncertainty.nii.gz`` is written too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mi_pipeline.cli.common import (
    add_config_options,
    add_run_dir_option,
    command_parser,
    exit_process,
    run_main,
)
from mi_pipeline.config import load_config
from mi_pipeline.errors import InputError
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.fold_setup import check_fold
from mi_pipeline.inference import (
    find_cines,
    fold_checkpoints,
    inference_device,
    load_ensemble,
    load_models,
    predict_one,
    stored_config,
)
from mi_pipeline.stages.registry import inference_stages


def main(argv: list[str] | None = None) -> int:
    p = command_parser("predict", __doc__)
    p.add_argument("--cine", "--dicom", dest="cine", required=True, type=Path,
                   help="4D cine NIfTI, a folder of them, or a folder of DICOM series (one subject per folder)")
    p.add_argument("--out", required=True, type=Path, help="output folder (DIR/<subject>/...)")
    src = p.add_mutually_exclusive_group()
    add_run_dir_option(src, default=None)
    src.add_argument("--checkpoints", type=Path, default=None, help="folder with <stage>/best_model.pth")
    add_config_options(p, config_help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--fold", type=int, default=None, metavar="k",
                   help="k-fold run: fold k's models alone (default: the ensemble of every fold)")
    p.add_argument("--ed", default="auto",
                   help="0-based ED frame of the cine(s), or 'auto' (default): found from the images")
    args = p.parse_args(argv)
    ed = _parse_ed(args.ed)
    run_dir = args.run_dir if args.run_dir is not None else Path(".")
    folds = fold_checkpoints(run_dir) if args.checkpoints is None and args.fold is None else []
    if args.fold is not None:
        check_fold(args.fold, len(RunLayout(run_dir).fold_roots()), str(run_dir))
    ckpt_root = (args.checkpoints if args.checkpoints is not None else folds[0] if folds
                 else (RunLayout(run_dir).fold(args.fold).root if args.fold is not None else run_dir) / "checkpoints")
    cines = find_cines(args.cine)
    if args.config is not None or args.overrides:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = stored_config(ckpt_root)
    torch.set_num_threads(cfg.threads)
    stages, device = inference_stages(cfg), inference_device(cfg)
    models = load_ensemble(cfg, folds, stages, device) if folds else load_models(cfg, ckpt_root, stages, device)
    for subject_id, path in cines:
        report = predict_one(subject_id, path, args.out, models, cfg, ed=ed)
        interval = report.get("ensemble", {}).get("infarct_percent_interval")
        span = f" [folds {interval[0]:.1f}..{interval[1]:.1f}]" if interval else ""
        print(f"{subject_id}: infarct {report['infarct_percent']:.1f}%{span} of myocardium "
              f"({report['infarct_ml']:.1f} ml), ED frame {report['frames']['ed']}, ES frame "
              f"{report['frames']['es']} -> {args.out / subject_id}")
    return 0


def _parse_ed(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--ed: expected a frame index or 'auto', got {value!r}") from None


if __name__ == "__main__":
    exit_process(run_main(main))
