#!/usr/bin/env bash
# Submit the whole pipeline as four plain sbatch jobs linked by afterok dependencies:
#
#   data --> motion ------+
#        \-> registration +--> segmentation
#
#   slurm/submit_chain.sh CONFIG RUN_DIR [extra sbatch options...]
#   slurm/submit_chain.sh configs/run.yaml /scratch/me/run1 --partition=gpu --gres=gpu:1 --time=12:00:00
#
# Extra options are passed to every sbatch call (use them for GPUs, partition, account, time).
# A dependant of a failed job is cancelled at once (--kill-on-invalid-dep=yes) instead of pending
# forever. Each job runs slurm/run_stage.sbatch, which resumes from the stage's last checkpoint and
# requeues itself before its time limit. Prints one "stage job_id" line per job; job logs go to
# RUN_DIR/logs/slurm/. (`python -m mi_pipeline submit` does the same through submitit and also
# skips stages that are already done; this script always submits all four.)
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
for value in "$CONFIG" "$RUN_DIR"; do
    if [[ "$value" == *,* ]]; then
        # sbatch --export=... is comma-separated: a comma in a path would split it.
        echo "error: '$value' contains a comma, which sbatch --export cannot carry" >&2
        exit 1
    fi
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONFIG=$(realpath "$CONFIG")
mkdir -p "$RUN_DIR/logs/slurm"
RUN_DIR=$(realpath "$RUN_DIR")

# submit STAGE [sbatch options...] -> prints the job id
submit() {
    local stage=$1 out
    shift
    out=$(sbatch --parsable \
        --job-name="mi-$stage" \
        --output="$RUN_DIR/logs/slurm/%x-%j.out" \
        --export="ALL,STAGE=$stage,CONFIG=$CONFIG,RUN_DIR=$RUN_DIR" \
        "$@" "${EXTRA[@]}" "$SCRIPT_DIR/run_stage.sbatch")
    echo "${out%%;*}" # --parsable prints "jobid[;cluster]"
}

data=$(submit data)
echo "data $data"
motion=$(submit motion --dependency="afterok:$data" --kill-on-invalid-dep=yes)
echo "motion $motion"
registration=$(submit registration --dependency="afterok:$data" --kill-on-invalid-dep=yes)
echo "registration $registration"
segmentation=$(submit segmentation --dependency="afterok:$motion:$registration" --kill-on-invalid-dep=yes)
echo "segmentation $segmentation"
