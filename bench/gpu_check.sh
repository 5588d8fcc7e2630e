#!/usr/bin/env bash
# The GPU checks of issue 10, as one short script for a borrowed CUDA machine (about 2-4 minutes).
# It assumes the repository's .venv (torch 2.14.1 / torchvision 0.29.1 CUDA builds) travelled with the tree.
#   1. the CUDA test: two training steps of ResNet-18 on the GPU in bf16, channels-last;
#   2. bench/train_bench.py: one epoch of ResNet-18 at 64×64, CPU FP32 vs CUDA bf16, with the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT_DIR="${OUT:-/tmp}"
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")'
# -m cuda selects the CUDA test; -rs prints a skip's reason if torch sees no GPU.
.venv/bin/pytest -q -rs -p no:cacheprovider -m cuda tests/unit/ml_arch/test_arch.py 2>&1 | tee "$OUT_DIR/gpu_test.txt"
$PY bench/train_bench.py --images "${IMAGES:-4096}" --size 64 --batch 128 2>&1 | tee "$OUT_DIR/train_bench.txt"
