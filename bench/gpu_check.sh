#!/usr/bin/env bash
# The GPU checks of issue 10, as one short script for a borrowed CUDA machine (about 2-4 minutes).
#   1. the CUDA test: two training steps of ResNet-18 on the GPU in bf16, channels-last;
#   2. bench/train_bench.py: one epoch of ResNet-18 at 64×64, CPU FP32 vs CUDA bf16, with the ratio.
#
# The repository's .venv (5.5 GB of CUDA wheels) cannot travel to that machine (64 MiB limit). It has its own
# python3 with torch 2.11 + torchvision 0.26 + pytest; what it lacks travels as wheels in .whl/ (git-ignored):
# torch_pruning-1.6.1-py3-none-any.whl and the zstandard-0.23.0 cp312 manylinux wheel, fetched here with
#   .venv/bin/pip download --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: \
#       --no-deps -d .whl torch-pruning==1.6.1 zstandard==0.23.0
# They are installed into /tmp/site (no index, no deps) and the repo root goes on PYTHONPATH instead of an
# editable install. Run it with `run` carrying .whl: bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."   # the repo root
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")'
# -m cuda selects the CUDA test; -rs prints a skip's reason if torch sees no GPU; addopts="" drops the repo's
# --import-mode and timeout options (pytest-timeout is not installed there).
python3 -m pytest -q -rs -p no:cacheprovider -o addopts="" -m cuda tests/unit/ml_arch/test_arch.py
python3 bench/train_bench.py --images "${IMAGES:-4096}" --size 64 --batch 128
