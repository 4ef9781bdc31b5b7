#!/usr/bin/env bash
# Issue 23, item 6: the knee study at scale, one short script a GPU machine runs as it is (target: under 8 min
# on one GPU). ViT-S at 224 px, SSL on knee-oa-dev's train split, probes on the CPU of that machine.
#   bash bench/gpu_knee.sh [OUT]        (OUT defaults to $OUT, else bench/results/real_probe_knee_vit_s)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results}/real_probe_knee_vit_s}
data=${XR0_KNEE:-../shared/data/knee-oa-dev}
[ -f "$data/manifest.csv" ] || data=shared/data/knee-oa-dev
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec timeout 480 "$PY" bench/real_probe.py --data "$data" --preset vit-s --device cuda --steps 500,2000 \
  --features cls+grid4,cls --label-budgets 50,200 --budget-draws 3 --out "$out"
