#!/usr/bin/env bash
# Submit the pipeline as plain sbatch jobs (no submitit) linked by afterok dependencies:
#
#   data --> motion ------+
#        \-> registration +--> segmentation
#
#   slurm/submit_chain.sh CONFIG RUN_DIR [extra sbatch options...]
#   slurm/submit_chain.sh run.yaml /scratch/me/run1 --partition=gpu --gres=gpu:1 --time=12:00:00
#
# Extra options are passed to every sbatch call (GPUs, partition, account, time; a job for data
# does not need a GPU, but one set of options keeps this script simple). Each job runs
# slurm/run_stage.sbatch, which resumes from the stage's last checkpoint and requeues itself
# before its time limit. A dependant of a failed job is cancelled at once (--kill-on-invalid-dep=yes)
# instead of pending forever. Prints one "stage job_id" line per job; job output goes to
# RUN_DIR/logs/slurm/mi-<stage>-<jobid>.out.
#
# Like `python -m mi_pipeline.submit --mode resume --executor slurm` (and on the same progress
# record, so you can switch between the two mid-run), it submits only what is missing: stages that
# are done are skipped, and a stage whose job is still pending or running is kept (its job id
# becomes the dependency) rather than submitted twice. The job ids go into .training_progress, so
# `python -m mi_pipeline status` and `cancel` see them. That needs mi_pipeline importable by
# MI_PYTHON (or inside MI_CONTAINER) here; where it is not, all four stages are submitted and the
# jobs record themselves when they start.
#
# Environment: MI_CONTAINER, MI_RUNTIME, MI_NV, MI_PYTHON, MAX_REQUEUES as in run_stage.sbatch
# (they reach the jobs through sbatch's default --export=ALL).
set -euo pipefail

usage() {
    echo "usage: $0 CONFIG RUN_DIR [extra sbatch options...]" >&2
    exit 2
}
(($# >= 2)) || usage
CONFIG=$1
RUN_DIR=$2
shift 2
EXTRA=("$@")

[[ -f "$CONFIG" ]] || {
    echo "error: config file '$CONFIG' not found" >&2
    exit 1
}
command -v sbatch >/dev/null || {
    echo "error: sbatch not found: this script needs a SLURM cluster" >&2
    exit 1
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONFIG=$(realpath "$CONFIG")
mkdir -p "$RUN_DIR/logs/slurm"
RUN_DIR=$(realpath "$RUN_DIR")

if [[ -n "${MI_CONTAINER:-}" ]]; then
    PYTHON_CMD=("${MI_RUNTIME:-apptainer}" exec -B "$RUN_DIR" -B "$(dirname "$CONFIG")" "$MI_CONTAINER" python)
else
    read -r -a PYTHON_CMD <<<"${MI_PYTHON:-python}"
fi

# The helper speaks two commands: "plan CONFIG RUN_DIR" prints one line per stage
# ("run STAGE RESTART(0|1) RECORDED_JOB_ID|- reason" or "skip STAGE reason");
# "record RUN_DIR NOTE STAGE=JOBID..." stores submitted jobs. Exit status 3: mi_pipeline not importable.
read -r -d '' HELPER <<'PY' || true
import sys
from pathlib import Path

try:
    from mi_pipeline.errors import UserError
    from mi_pipeline.progress import ProgressFile, now
except ImportError as exc:
    print(f"mi_pipeline is not importable here ({exc})", file=sys.stderr)
    sys.exit(3)

command, *args = sys.argv[1:]
try:
    if command == "plan":
        from mi_pipeline.config import load_config
        from mi_pipeline.data.prepare import data_is_prepared
        from mi_pipeline.layout import RunLayout, rebuild_records
        from mi_pipeline.plan import make_plan

        cfg = load_config(args[0])
        root = Path(args[1])
        layout = RunLayout(root)
        progress = ProgressFile(root, inspect_disk=lambda: rebuild_records(layout)).read()
        steps = make_plan("resume", layout, progress, data_ready=data_is_prepared(cfg, root))
        for step in steps:
            record = progress.stages[step.stage]
            if not step.run:
                print("skip", step.stage, step.reason)
            else:
                job = record.job_id if record.executor == "slurm" and record.job_id else "-"
                print("run", step.stage, int(step.restart), job, step.reason)
    elif command == "record":
        root, note, pairs = Path(args[0]), args[1], args[2:]

        def on_disk():  # only for a corrupted record (layout imports torch: slow)
            from mi_pipeline.layout import RunLayout, rebuild_records

            return rebuild_records(RunLayout(root))

        with ProgressFile(root, inspect_disk=on_disk).update() as record:
            for stage, _, job_id in (pair.partition("=") for pair in pairs):
                entry = record.stages[stage]
                entry.status, entry.executor, entry.job_id, entry.error, entry.note, entry.updated = (
                    "pending", "slurm", job_id, None, note, now())
    else:
        raise SystemExit(f"unknown helper command {command!r}")
except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
PY

helper() { "${PYTHON_CMD[@]}" -c "$HELPER" "$@"; }

have_record=1
if plan=$(helper plan "$CONFIG" "$RUN_DIR"); then
    :
else
    status=$?
    if ((status != 3 && status != 126 && status != 127)); then # 3: no mi_pipeline; 126/127: no python
        echo "error: cannot plan the run (see above); nothing submitted" >&2
        exit "$status"
    fi
    echo "warning: cannot read the progress record with '${PYTHON_CMD[*]}': submitting all four stages" >&2
    have_record=0
    plan=$'run data 0 -\nrun motion 0 -\nrun registration 0 -\nrun segmentation 0 -'
fi

# Job states during which a recorded job still counts as the stage's job (as the Python submitter's).
ACTIVE_STATES=" PENDING RUNNING REQUEUED REQUEUE_HOLD REQUEUE_FED CONFIGURING COMPLETING RESIZING SUSPENDED SIGNALING STAGE_OUT PREEMPTED "
job_state() { squeue -h -j "$1" -o %T 2>/dev/null | head -n 1 || true; }

declare -A job_of=()
declare -A upstream=([data]="" [motion]="data" [registration]="data" [segmentation]="motion registration")
held=()

# Jobs are submitted held and released together once their ids are in the progress record, so a
# job that starts at once can never have its own "running"/"done" overwritten by "pending".
user_hold=0
for option in "${EXTRA[@]}"; do
    if [[ "$option" == --hold || "$option" == -H ]]; then user_hold=1; fi
done
release_held() {
    if ((user_hold && ${#held[@]})); then
        echo "submitted held (--hold): release with scontrol release ${held[*]}" >&2
        held=()
    fi
    if ((${#held[@]})); then
        scontrol release "${held[@]}" ||
            echo "error: could not release held jobs ${held[*]}: run scontrol release ${held[*]}" >&2
        held=()
    fi
}
trap release_held EXIT

# submit STAGE RESTART -> prints the job id
submit() {
    local stage=$1 restart=$2 deps=() up out
    for up in ${upstream[$stage]}; do
        if [[ -n "${job_of[$up]:-}" ]]; then deps+=("${job_of[$up]}"); fi
    done
    local dep_opts=()
    if ((${#deps[@]})); then
        dep_opts=(--dependency="afterok:$(IFS=:; echo "${deps[*]}")" --kill-on-invalid-dep=yes)
    fi
    out=$(RESTART=$restart sbatch --parsable --hold \
        --job-name="mi-$stage" \
        --output="$RUN_DIR/logs/slurm/%x-%j.out" \
        "${dep_opts[@]}" "${EXTRA[@]}" "$SCRIPT_DIR/run_stage.sbatch" "$stage" "$CONFIG" "$RUN_DIR")
    echo "${out%%;*}" # --parsable prints "jobid[;cluster]"
}

submitted=()
while read -r action stage rest; do
    case $action in
    skip)
        echo "$stage skipped: $rest" >&2
        ;;
    run)
        read -r restart recorded _ <<<"$rest"
        state=""
        if [[ "$recorded" != - ]]; then state=$(job_state "$recorded"); fi
        if [[ -n "$state" && "$ACTIVE_STATES" == *" $state "* ]]; then
            job_of[$stage]=$recorded
            echo "$stage $recorded (already $state: kept, no duplicate submitted)" >&2
            echo "$stage $recorded"
            continue
        fi
        job=$(submit "$stage" "$restart")
        job_of[$stage]=$job
        held+=("$job")
        submitted+=("$stage=$job")
        echo "$stage $job"
        ;;
    esac
done <<<"$plan"

if ((${#submitted[@]})) && ((have_record)); then
    helper record "$RUN_DIR" "submitted by slurm/submit_chain.sh" "${submitted[@]}" ||
        echo "warning: could not record ${submitted[*]} in the progress record" >&2
fi
release_held
if ((${#job_of[@]} == 0)); then echo "nothing to do: every stage is done" >&2; fi
