"""Score every trained stage on held-out subjects, beside the trivial baseline each must beat.

``python -m mi_pipeline.evaluate --run-dir RUN [--split test | --data-root DIR --format F] [--json]``

Subjects: the run's --split (default test: subjects no stage trained or chose an epoch on), or a
separate dataset with --data-root (e.g. a phantom generated with another seed), preprocessed as the
data step does. Truth is the cine labels (or, for segmentation without them, the LGE labels carried
into the cine by the registration model). What is scored, each beside its baseline:
  motion        ED->ES myocardium Dice of the ED labels warped to ES (baseline: identity, no motion);
                folding % (Jacobian determinant <= 0 in the myocardium)
  registration  cine<->LGE myocardium Dice after vs before registration (baseline: no registration),
                with how many subjects the per-subject QA kept at identity / rigid / affine / deformable
  segmentation  from the cine alone, as predict runs it: infarct Dice and HD95 (mm) over subjects
                with an infarct, myocardium Dice, infarct size error (points of % myocardium), infarct
                % predicted where there is none, AHA-segment detection AUC (baseline: no infarct)
Values are means over subjects (sd and n beside them, per-subject lists in --json). A stage the data
cannot score (no labels, no LGE) is reported as skipped with the reason.

k-fold run: every fold scored on its own held-out subjects, the pooled figures (each subject counted
once), and the ensemble of the folds on --split with the rank correlation of its fold disagreement
against its error (none below 3 subjects; the table says why). --fold k scores one fold as a run.
Progress goes to stderr (a bar on a terminal, a line per tenth of the subjects otherwise).

--figures DIR writes summary.png (model vs baseline), bland_altman.png (infarct size, with n and a
caveat below 10 subjects) and segment_roc.png. Exit status: 0 done; 2 bad input (one error line).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mi_pipeline.cli.common import (
    add_run_options,
    command_parser,
    exit_process,
    run_main,
)
from mi_pipeline.cli.helptext import full_help
from mi_pipeline.config import load_config
from mi_pipeline.data import cache
from mi_pipeline.data.folds import fold_roots
from mi_pipeline.fsio import atomic_write_text
from mi_pipeline.graph import MODEL_STAGES
from mi_pipeline.layout import RunLayout
from mi_pipeline.orchestration.fold_setup import check_fold


def main(argv: list[str] | None = None) -> int:
    p = full_help(command_parser("evaluate", __doc__), __doc__)
    add_run_options(p, config_help="YAML config (default: the config stored in the trained checkpoints)")
    p.add_argument("--split", default="test", choices=cache.SPLITS, help="which split of the run (default test)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="score a separate dataset instead of a split (e.g. a phantom generated with another seed)")
    p.add_argument("--format", default=None, help="adapter for --data-root (default: data.format; phantom = generic)")
    p.add_argument("--stage", action="append", choices=MODEL_STAGES, default=None,
                   help="score only this stage (repeatable); an untrained stage named here is an error")
    p.add_argument("--fold", type=int, default=None, metavar="k",
                   help="k-fold run: score fold k alone, as a run of its own (default: cross-validated, all folds)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result to this file")
    p.add_argument("--figures", type=Path, default=None,
                   help="write summary.png, bland_altman.png and segment_roc.png to this folder")
    args = p.parse_args(argv)
    from mi_pipeline.cv_evaluation import evaluate_cv, format_cv_table  # torch: after --help, not before
    from mi_pipeline.evaluation import evaluate, format_table, run_config

    run_dir = args.run_dir.resolve()
    folds = fold_roots(run_dir)
    check_fold(args.fold, len(folds), str(run_dir))
    if args.fold is not None:
        run_dir, folds = RunLayout(run_dir).fold(args.fold).root, []
    if args.config is not None or args.overrides:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = run_config(RunLayout(folds[0] if folds else run_dir).checkpoints)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    stages = tuple(args.stage) if args.stage else None
    if folds:
        result = evaluate_cv(cfg, run_dir, split=args.split, stages=stages, data_root=args.data_root,
                             fmt=args.format, log=log)
    else:
        result = evaluate(cfg, run_dir, split=args.split, data_root=args.data_root, fmt=args.format, stages=stages,
                          log=log)
    text = json.dumps(result, indent=1, default=float)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    if args.figures is not None:
        from mi_pipeline.clinical.figures import (
            write_evaluation_figures,  # matplotlib only when asked
        )

        for path in write_evaluation_figures(result, args.figures):
            log(f"evaluate: wrote {path}")
    print(text if args.json else format_cv_table(result) if folds else format_table(result))
    return 0


if __name__ == "__main__":
    exit_process(run_main(main))
