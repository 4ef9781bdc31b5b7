#!/usr/bin/env bash
# The GPU benches as one short script for a lent GPU machine (target: under 8 min on one H100/H200).
#   bash bench/gpu_device.sh [OUT]      (OUT defaults to $OUT, else bench/results)
# 0. bench/gpu_smoke.py (DP and plain site training on the GPU, per-unit gradients GPU vs CPU);
# 1. bench/gpu.py at each preset's batch, plain and DP-SGD (eager);  2. plain at batch 128 with torch.compile.
# Needs only torch, timm and numpy on the machine (xr0_core is put on PYTHONPATH, nothing is installed).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results}}
mkdir -p "$out"
PY=${PYTHON:-python3}
# DP rows need opacus: a lent machine without it gets the wheel carried in .whl (see .library/device/README.md)
"$PY" -c "import opacus" 2>/dev/null || { [ -d .whl ] && "$PY" -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH_EXTRA=/tmp/site; }
export PYTHONPATH=$PWD${PYTHONPATH_EXTRA:+:$PYTHONPATH_EXTRA} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
timeout 120 "$PY" bench/gpu_smoke.py --json-out "$out/gpu_smoke.json" 2>&1 | tee "$out/gpu_smoke.log"
timeout 300 "$PY" bench/gpu.py --presets vit-s,vit-b --modes plain,dp --steps 20 --json-out "$out/gpu.json" 2>&1 | tee "$out/gpu.log"
timeout 200 "$PY" bench/gpu.py --presets vit-s,vit-b --modes plain --batch 128 --compile --steps 20 \
  --json-out "$out/gpu_compile.json" 2>&1 | tee "$out/gpu_compile.log"
