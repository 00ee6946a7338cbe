#!/usr/bin/env bash
# Submit the pipeline as plain sbatch jobs (no submitit) linked by afterok dependencies:
#
#   data --> motion ------+
#        \-> registration +--> segmentation
#
#   slurm/submit_chain.sh [--fold K] CONFIG RUN_DIR [extra sbatch options...]
#   slurm/submit_chain.sh run.yaml /scratch/me/run1 --partition=gpu --gres=gpu:1 --time=12:00:00
#
# k-fold cross-validation (cv.folds in CONFIG): without --fold the chain is the shared data stage
# alone; with --fold K it is fold K's motion -> registration -> segmentation, in RUN_DIR/folds/K,
# waiting on the data job while it is queued. Submit the data, then every fold:
#   slurm/submit_chain.sh cv.yaml RUN; for k in 0 1 2 3 4; do slurm/submit_chain.sh --fold $k cv.yaml RUN; done
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
# MI_PYTHON (or inside MI_CONTAINER) here; where it is not, the script says so and submits nothing.
#
# Environment: MI_CONTAINER, MI_RUNTIME, MI_NV, MI_PYTHON, MAX_REQUEUES as in run_stage.sbatch
# (they reach the jobs through sbatch's default --export=ALL).
set -euo pipefail

usage() {
    echo "usage: $0 [--fold K] CONFIG RUN_DIR [extra sbatch options...]" >&2
    exit 2
}
FOLD=""
if [[ "${1:-}" == --fold ]]; then
    [[ "${2:-}" =~ ^[0-9]+$ ]] || usage
    FOLD=$2
    shift 2
fi
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
# where this chain's record and job output live: the run, or one fold of it (a run of its own)
CHAIN_DIR=$RUN_DIR${FOLD:+/folds/$FOLD}
FOLD_ARGS=()
if [[ -n "$FOLD" ]]; then FOLD_ARGS=(--fold "$FOLD"); fi
mkdir -p "$CHAIN_DIR/logs/slurm" # sbatch fails a job whose --output folder is missing

if [[ -n "${MI_CONTAINER:-}" ]]; then
    PYTHON_CMD=("${MI_RUNTIME:-apptainer}" exec -B "$RUN_DIR" -B "$(dirname "$CONFIG")" "$MI_CONTAINER" python)
else
    read -r -a PYTHON_CMD <<<"${MI_PYTHON:-python}"
fi

# Everything this script needs to know -- the plan, which recorded jobs are still live, what each
# stage waits on, recording the submitted ids -- comes from mi_pipeline itself
# (`python -m mi_pipeline chain ...`), inside MI_CONTAINER when set, so no rule is copied here.
chain() { "${PYTHON_CMD[@]}" -m mi_pipeline chain "$@"; }
if ! "${PYTHON_CMD[@]}" -c "import mi_pipeline" 2>/dev/null; then
    echo "error: '${PYTHON_CMD[*]}' cannot import mi_pipeline: set MI_PYTHON to an interpreter that has it, or MI_CONTAINER to the image; nothing submitted" >&2
    exit 1
fi
if ! plan=$(chain plan "$CONFIG" "$RUN_DIR" "${FOLD_ARGS[@]}"); then
    echo "error: cannot plan the run (see above); nothing submitted" >&2
    exit 1
fi

declare -A job_of=()
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

# submit STAGE RESTART_TOKEN(or -) UPSTREAM(comma-separated stages or -) -> prints the job id
submit() {
    local stage=$1 token=$2 ups=$3 deps=() up out
    for up in ${ups//,/ }; do
        if [[ "$up" != - && -n "${job_of[$up]:-}" ]]; then deps+=("${job_of[$up]}"); fi
    done
    local dep_opts=()
    if ((${#deps[@]})); then
        dep_opts=(--dependency="afterok:$(IFS=:; echo "${deps[*]}")" --kill-on-invalid-dep=yes)
    fi
    out=$(RESTART_TOKEN=$token sbatch --parsable --hold \
        --job-name="mi-$stage" \
        --output="$CHAIN_DIR/logs/slurm/%x-%j.out" \
        "${dep_opts[@]}" "${EXTRA[@]}" "$SCRIPT_DIR/run_stage.sbatch" "$stage" "$CONFIG" "$RUN_DIR" ${FOLD:+"$FOLD"}) || return 1
    out=${out%%;*} # --parsable prints "jobid[;cluster]"
    [[ "$out" =~ ^[0-9]+$ ]] || return 1
    echo "$out"
}

# A submission is all or nothing: when sbatch refuses a stage, the jobs this call already submitted
# (still held) are cancelled, the stage's record says why, and the script exits non-zero.
abandon() {
    local stage=$1
    if ((${#held[@]})); then
        scancel "${held[@]}" || echo "warning: could not cancel ${held[*]}" >&2
        echo "cancelled the jobs this call had submitted: ${held[*]}" >&2
        held=()
    fi
    chain record "$CHAIN_DIR" "$stage" status=failed \
        "error=sbatch refused the $stage job (see the submit_chain.sh output); nothing of this submission was kept" ||
        echo "warning: could not record the failure in the progress record" >&2
    echo "error: sbatch refused the $stage job (see above); nothing submitted" >&2
    exit 1
}

submitted=()
while read -r action stage rest; do
    case $action in
    skip)
        echo "$stage skipped: $rest" >&2
        ;;
    keep)
        read -r job state _ <<<"$rest"
        job_of[$stage]=$job
        echo "$stage $job (already $state: kept, no duplicate submitted)" >&2
        echo "$stage $job"
        ;;
    run)
        read -r token ups _ <<<"$rest"
        job=$(submit "$stage" "$token" "$ups") || abandon "$stage"
        job_of[$stage]=$job
        held+=("$job")
        submitted+=("$stage=$job")
        echo "$stage $job"
        ;;
    esac
done <<<"$plan"

if ((${#submitted[@]})); then
    chain record-jobs "$CHAIN_DIR" "submitted by slurm/submit_chain.sh" "${submitted[@]}" ||
        echo "warning: could not record ${submitted[*]} in the progress record" >&2
fi
release_held
if ((${#job_of[@]} == 0)); then echo "nothing to do: every stage is done" >&2; fi
