"""The commands: one thin module each (parse arguments, call the library, print), plus ``common``.

``COMMANDS`` is the list ``python -m mi_pipeline --help`` shows; every name in it is also a module
``mi_pipeline.<name>`` so ``python -m mi_pipeline.<name>`` keeps working.
"""

from __future__ import annotations

COMMANDS: dict[str, str] = {
    "submit": "run the pipeline: choose a mode (fresh / resume / skip), plan, run locally or submit to SLURM",
    "train": "run one stage (what a job executes); continues from last.pth after a crash",
    "status": "where a run stands: state, per-stage epoch, best metric, SLURM job, recent trouble",
    "cancel": "cancel the run's pending and running SLURM jobs",
    "evaluate": "score the trained stages on held-out subjects beside trivial baselines",
    "predict": "infarct segmentation and report from a cine alone",
    "phantom": "write the built-in synthetic dataset in the generic layout",
    "clean": "list what a run no longer needs (set-aside checkpoints, temp files) with sizes; delete with --yes",
    "chain": "what the slurm/ sbatch wrappers ask: plan, record job ids, requeue decisions",
}
