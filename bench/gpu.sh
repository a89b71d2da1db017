#!/usr/bin/env bash
# GPU paths, run for real on a machine with an NVIDIA GPU (a few minutes):
#   1. installs the `gpu` extra (faiss-gpu, onnxruntime-gpu) into .venv in place of the CPU builds
#   2. builds a small bundle if there is none (the ranker to time; 2 epochs of ml-latest-small)
#   3. bench/gpu.py: a 1M-item FAISS index, GPU against CPU (exact and IVF-SQ8, recall@100 vs
#      exact), and the ranker with onnxruntime's CUDA provider against CPU
#   -> bench/results/gpu.json
#
#   bash bench/gpu.sh                 # on the GPU machine, from the repository root
#   ITEMS=20000 SKIP_INSTALL=1 bash bench/gpu.sh   # a quick check of the CPU parts anywhere
#
# Without a GPU it still runs the CPU parts and gpu.json says what did not run and why.
# Afterwards `make venv` (or `pip install faiss-cpu onnxruntime` at the pinned versions) puts
# the CPU builds back.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
ITEMS=${ITEMS:-1000000}
OUT=${OUT:-bench/results/gpu.json}
[ -x "$PY" ] || make venv

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi -L
  if [ -z "${SKIP_INSTALL:-}" ]; then
    # faiss-gpu and faiss-cpu install the same module: remove the CPU builds first
    "$PY" -m pip uninstall -y -q faiss-cpu onnxruntime || true
    "$PY" -m pip install -q -e ".[gpu]"
  fi
else
  echo "no NVIDIA GPU here (nvidia-smi missing or sees none): measuring the CPU parts only" >&2
fi

BUNDLE=${BUNDLE:-artifacts/latest}
if [ ! -f "$BUNDLE/ranker.onnx" ]; then
  BUNDLE=artifacts/gpu-check
  if [ ! -f "$BUNDLE/ranker.onnx" ]; then
    .venv/bin/vidrec build --dataset ml-latest-small --epochs 2 --version gpu-check
  fi
fi

"$PY" -c "import faiss, onnxruntime as o; print('faiss', faiss.__version__, 'gpus',
faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0, '| onnxruntime',
o.__version__, o.get_available_providers())"
nice -n 5 "$PY" -m bench.gpu --items "$ITEMS" --bundle "$BUNDLE" --out "$OUT" \
  ${NOTE:+--note "$NOTE"}
echo "wrote $OUT"
