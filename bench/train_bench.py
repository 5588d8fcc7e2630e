"""Training throughput: one epoch of the torchvision ResNet-18 teacher at 64×64, CPU FP32 vs CUDA bf16.

Run: ``.venv/bin/python bench/train_bench.py [--images 2048] [--size 64] [--batch 64]``

Both rows go through ``ml.train.fit`` exactly as the pipeline's teacher step does (one epoch, the same seeded
data), so the ratio is what a user gains by setting ``device: cuda`` and ``precision: bf16``. The CUDA row
(channels-last, bf16 autocast) runs only when torch sees a GPU; the table says so otherwise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ml.arch import build_model
from ml.device import resolve_runtime
from ml.train import fit, seed_everything


def _one_epoch(runtime_device: str, precision: str, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    runtime = resolve_runtime(runtime_device, precision)
    seed_everything(0)
    model = build_model("torchvision:resnet18", role="teacher", input_shape=x.shape[1:], num_classes=10)
    if (
        runtime.is_cuda
    ):  # one warm-up epoch on a slice: cuDNN autotuning and the CUDA context are not training
        fit(model, (x[: 2 * batch], y[: 2 * batch]), (x[:batch], y[:batch]), epochs=1, lr=1e-3,
            batch_size=batch, runtime=runtime)  # fmt: skip
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fit(model, (x, y), (x[:batch], y[:batch]), epochs=1, lr=1e-3, batch_size=batch, runtime=runtime)
    if runtime.is_cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    return float(result.history[0]["images_per_s"]) if wall > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.images, 3, args.size, args.size)).astype(np.float32)
    y = (np.arange(args.images) % 10).astype(np.int64)
    rows = [("cpu fp32", _one_epoch("cpu", "fp32", x, y, args.batch))]
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        rows.append((f"cuda bf16 channels-last ({name})", _one_epoch("cuda", "bf16", x, y, args.batch)))
    base = rows[0][1]
    print(f"ResNet-18, one epoch of {args.images} images at {args.size}×{args.size}, batch {args.batch}, "
          f"{args.threads} CPU thread(s)")  # fmt: skip
    print(f"{'run':<48} {'images/s':>10} {'vs cpu':>8}")
    for label, rate in rows:
        print(f"{label:<48} {rate:>10.1f} {rate / base:>7.1f}×")
    if not torch.cuda.is_available():
        print("cuda: skipped (torch.cuda.is_available() is False on this machine)")


if __name__ == "__main__":
    main()
