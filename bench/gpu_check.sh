#!/usr/bin/env bash
# GPU check for a lent machine (see bench/gpu_check.py): sized for under 8 minutes on an H100, JSON to $OUT/gpu.json.
#   bash bench/gpu_check.sh                                   # on the GPU machine (its python3)
#   PYTHON=.venv/bin/python OUT=/tmp bash bench/gpu_check.sh --smoke   # CPU dry run, GPU-absent packages blocked
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
"${PYTHON:-python3}" bench/gpu_check.py --out "${OUT:-bench/results}/gpu.json" "$@"
