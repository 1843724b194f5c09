#!/usr/bin/env bash
# The GPU check (issue 19, part 5), one prepared script for a lent GPU, under 8 minutes:
#   1. the tests that touch a device (tests/test_devices.py) on CUDA,
#   2. benchmarks/gpu_check.py: DiT-XL/2 training steps in bf16 (eager, torch.compile, diffusers'
#      PixArt), activation checkpointing under 24 GiB, top-1 ensemble sampling against diffusers.
# Results go to $1 (default: $OUT where set, else .): gpu_tests.log, gpu_check.log,
# gpu_check.json. Without a CUDA device it says so and exits 0 (nothing is skipped silently:
# the line is printed). Runs from a checkout with `src` on PYTHONPATH, so no install is needed
# where torch, accelerate, safetensors, pillow, pyyaml and tqdm exist (diffusers too, for the
# comparisons).
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-${OUT:-.}}
mkdir -p "$out_dir"
py=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA device here; the GPU check was skipped"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$py" -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
status=0
HETDIFF_TEST_DEVICE=cuda timeout 150 "$py" -m pytest -q -p no:cacheprovider -o addopts="" \
  --import-mode=importlib tests/test_devices.py 2>&1 | tee "$out_dir/gpu_tests.log" || status=1
timeout 330 "$py" benchmarks/gpu_check.py --json "$out_dir/gpu_check.json" "${@:2}" 2>&1 \
  | tee "$out_dir/gpu_check.log" || status=1
exit $status
