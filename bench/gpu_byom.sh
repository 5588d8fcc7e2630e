#!/usr/bin/env bash
# The full-size accuracy benchmark of issue 10 on a borrowed CUDA machine (H200, 16 cores), in about 3-5 minutes:
# bench/byom_accuracy.py, ResNet-18 teacher -> MobileNetV3-small student on synthetic-glyphs 64x64 RGB, 12 000
# images, KD and label-only students over 3 seeds, ONNX FP32 and static INT8 (goal: INT8 <= 1.0 pp below its
# FP32 parent). Training runs on the GPU in bf16 (channels-last); ONNX export, INT8 calibration and scoring run
# on the CPU with ONNX Runtime, as in the pipeline.
#
# That machine has its own python3 (torch 2.11, torchvision 0.26, onnx, onnxruntime, rich, pillow, numpy) but
# none of our venv; the bench imports nothing else (checked: not pydantic, torch-pruning, zstandard, MLflow).
# The glyph set travels as a file in the git-ignored .gpu/ folder, so the other machine's fonts cannot change
# the data; prepare it here once (seconds):
#   mkdir -p .gpu && .venv/bin/python -c "from ml import synthetic; print(synthetic.cached_npz('.edgefleet/datasets'))" \
#       | xargs -I{} cp {} .gpu/synthetic-glyphs-12000.npz
# Wheels placed in .gpu/ (*.whl, cp312 manylinux) are installed into /tmp/site first; none are needed today.
# Run it with `run`, carrying .gpu:   bash bench/gpu_byom.sh
# Knobs (environment): EPOCHS (12), SEEDS (3), IMAGES (12000), THREADS (nproc), DEVICE (cuda), PRECISION (bf16),
# NPZ (.gpu/synthetic-glyphs-12000.npz), LIMIT_S (330: the bench is killed after that many seconds), PY (python3).
set -euo pipefail
cd "$(dirname "$0")/.."   # the repo root
PY=${PY:-python3}
EPOCHS=${EPOCHS:-12}
SEEDS=${SEEDS:-3}
IMAGES=${IMAGES:-12000}
THREADS=${THREADS:-$(nproc)}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
NPZ=${NPZ:-.gpu/synthetic-glyphs-12000.npz}
LIMIT_S=${LIMIT_S:-330}

run() { echo "+ $*" >&2; "$@"; }

if compgen -G ".gpu/*.whl" >/dev/null; then
    run "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
if [[ ! -f "$NPZ" ]]; then
    echo "error: $NPZ is missing: make it on the development machine (see the top of $0) and carry .gpu" >&2
    exit 2
fi
run timeout 60 "$PY" -c 'import sys, torch, torchvision, onnxruntime, onnx; print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__, "onnxruntime", onnxruntime.__version__, "onnx", onnx.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")'
if [[ "$DEVICE" == cuda* ]]; then
    run timeout 60 "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")'
fi
started=$(date +%s)
# timeout -k: a bench stuck in a CUDA or ORT call still ends; its exit status (124) fails the script.
run timeout -k 10 "$LIMIT_S" "$PY" -u bench/byom_accuracy.py --device "$DEVICE" --precision "$PRECISION" \
    --threads "$THREADS" --images "$IMAGES" --seeds "$SEEDS" --epochs "$EPOCHS" --npz "$NPZ"
echo "gpu_byom.sh: bench wall time $(( $(date +%s) - started )) s"
