"""Infarct from a cine alone: segmentation, report.json, a QC figure and a bull's-eye per subject.

``python -m mi_pipeline.predict --cine FILE.nii.gz|FOLDER --out DIR [--run-dir RUN | --checkpoints DIR]``
writes DIR/<subject>/: infarct_seg.nii.gz (0 background, 1 myocardium, 2 infarct, on the cine's grid),
report.json (infarct %, per slice, per AHA segment, frames, confidence, and ``trust``: what the model
was trained on and whether the result is plausible), qc.png and bullseye.png; for DICOM input also a
DICOM SEG. On a k-fold run the folds' models are ensembled and infarct_uncertainty.nii.gz (the folds'
disagreement) is written and drawn in qc.png. Each subject's console line ends with the same trust
verdict: a model trained on the phantom only, applied to a cine that is not from the phantom, says
NOT A MEASUREMENT; a result whose myocardium does not look like training's says IMPLAUSIBLE.

Exit status: 0 done; 2 bad input or command line (one error line); 3 with --strict when any result is
implausible or not a measurement (every output is still written).

--cohort: a folder of many cines, resumable, as processes or a SLURM array, with DIR/cohort.csv; its
own options are listed by ``python -m mi_pipeline.predict --cohort --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mi_pipeline.cli.common import (
    add_config_options,
    add_run_dir_option,
    command_parser,
    exit_process,
    model_source,
    parse_ed,
    run_main,
)
from mi_pipeline.cli.helptext import full_help
from mi_pipeline.config import load_config
from mi_pipeline.errors import UserError

STRICT_EXIT = 3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--cohort" in argv:  # many cines, resumable (cli/cohort.py)
        from mi_pipeline.cli import cohort

        return cohort.main(argv)
    p = full_help(command_parser("predict", __doc__), __doc__)
    p.add_argument("--cohort", action="store_true",
                   help="many cines, resumable, with DIR/cohort.csv (its options: --cohort --help)")
    p.add_argument("--cine", "--dicom", dest="cine", required=True, type=Path,
                   help="4D cine NIfTI, a folder of them, or a folder of DICOM series (one subject per folder)")
    p.add_argument("--out", required=True, type=Path, help="output folder (DIR/<subject>/...)")
    src = p.add_mutually_exclusive_group()
    add_run_dir_option(src, default=None)
    src.add_argument("--checkpoints", type=Path, default=None, help="folder with <stage>/best_model.pth")
    add_config_options(p, config_help="YAML config (default: the one stored in the checkpoint)")
    p.add_argument("--fold", type=int, default=None, metavar="k",
                   help="k-fold run: fold k's models alone (default: the ensemble of every fold)")
    p.add_argument("--series", default=None, metavar="UID|NUMBER",
                   help="DICOM input: read this series alone (SeriesInstanceUID or SeriesNumber); by default parallel "
                        "series holding the same slices are chosen by rule (most images, then highest SeriesNumber)")
    p.add_argument("--ed", default="auto",
                   help="0-based ED frame of the cine(s), or 'auto' (default): the smallest DICOM TriggerTime, "
                        "else found from the images")
    p.add_argument("--strict", action="store_true",
                   help="exit 3 when any result is implausible or not a measurement (outputs are written first)")
    args = p.parse_args(argv)
    import torch  # the models' libraries load after --help and a bad command line, not before

    from mi_pipeline.clinical.trust import alarm
    from mi_pipeline.inference import (
        find_cines,
        inference_device,
        load_ensemble,
        load_models,
        predict_one,
        stored_config,
    )
    from mi_pipeline.stages.registry import inference_stages

    ed = parse_ed(args.ed)
    ckpt_root, folds = model_source(args.run_dir, args.checkpoints, args.fold)
    cines = find_cines(args.cine)
    if args.config is not None or args.overrides:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = stored_config(ckpt_root)
    torch.set_num_threads(cfg.threads)
    stages, device = inference_stages(cfg), inference_device(cfg)
    models = load_ensemble(cfg, folds, stages, device) if folds else load_models(cfg, ckpt_root, stages, device)
    alarms, failed = [], []
    for subject_id, path in cines:
        try:
            report = predict_one(subject_id, path, args.out, models, cfg, ed=ed, series=args.series)
        except UserError as exc:
            if len(cines) == 1:
                raise
            failed.append(subject_id)  # a folder of subjects goes on past a bad one; the status says so at the end
            print(f"error: {subject_id}: {exc}", file=sys.stderr)
            continue
        print(console_line(report, args.out / subject_id))
        if alarm(report["trust"]):
            alarms.append(f"{subject_id}: {report['trust']['label']}")
    if failed:
        raise UserError(f"{len(failed)} of {len(cines)} subject(s) failed ({', '.join(failed)}); the others' results "
                        f"are in {args.out}")
    if args.strict and alarms:
        print(f"error: --strict: {len(alarms)} result(s) not to be read as measurements: {'; '.join(alarms)}",
              file=sys.stderr)
        return STRICT_EXIT
    return 0


def console_line(report: dict, folder: Path) -> str:
    """One subject's result with the verdict beside the number (the same trust line as report.json), and
    a line when the AHA segments could not be anchored to the RV (report.json's ``aha_anchor``)."""
    from mi_pipeline.clinical.trust import alarm

    interval = report.get("ensemble", {}).get("infarct_percent_interval")
    span = f" [folds {interval[0]:.1f}..{interval[1]:.1f}]" if interval else ""
    verdict = report["trust"]
    mark = f"{verdict['label']}: " if alarm(verdict) else ""
    anchor = report.get("aha_anchor") or {}
    fixed = ("\n    AHA segments numbered from a FIXED angle, not the patient's RV insertion: "
             f"{anchor.get('why') or 'RV insertion not found'}") if anchor.get("method") == "fixed" else ""
    return (f"{report['subject']}: {mark}infarct {report['infarct_percent']:.1f}%{span} of myocardium "
            f"({report['infarct_ml']:.1f} ml), ED frame {report['frames']['ed']}, ES frame "
            f"{report['frames']['es']} -> {folder}\n    {verdict['line']}{fixed}")

if __name__ == "__main__":
    exit_process(run_main(main))
