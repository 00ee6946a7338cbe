#!/usr/bin/env bash
# The GPU check of issue 27: run on a lent GPU node from the repository root, a few minutes.
#   benchmarks/gpu_check.sh            # full sizes, 3 repeats; writes gpu_check.json
#   benchmarks/gpu_check.sh --quick    # smaller, 2 repeats
#   benchmarks/gpu_check.sh --device cpu --quick   # dry run on any machine (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: not available"
exec python -m benchmarks.gpu_check --json "${GPU_CHECK_JSON:-gpu_check.json}" "$@"
