"""Accuracy of bring-your-own-model distillation at a real size (issue 10), on CPU: a benchmark, not a test.

ResNet-18 teacher → MobileNetV3-small student (both torchvision, random init, nothing downloaded) on the
synthetic-glyphs set converted to 64×64 RGB. Trains the teacher once, then per seed a knowledge-distilled
student (KL + CE + feature matching layer3 → features.9) and the label-only ablation, and quantizes each KD
student to static INT8 with ONNX Runtime (the pipeline's QDQ path). Prints teacher, KD, label-only, FP32-ONNX
and INT8 accuracies (mean ± std over seeds), the INT8 drop against its FP32 parent (goal ≤ 1.0 pp) and wall
times.

Every training run recomputes the BatchNorm statistics before validation (``ml.batchnorm``, through
``ml.train.fit``): without that, MobileNetV3's BatchNorm momentum of 0.01 leaves eval mode at chance after a
short run.

Run: ``.venv/bin/python bench/byom_accuracy.py --images 12000 --seeds 3`` (the issue's full size: ≥ 10k
images, 3 seeds; hours on a small CPU). ``--images 600 --seeds 1 --epochs 2`` is a smoke run of a few minutes.
On a GPU: ``--device cuda --precision bf16 --threads 16`` (``bench/gpu_byom.sh`` runs it on the borrowed H200;
ONNX export, INT8 calibration and scoring stay on the CPU, as in the pipeline). ``--npz FILE`` reads the
glyph set from a file (the one generated here, so another machine's fonts do not change the data).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ml import synthetic
from ml.arch import build_model
from ml.data import load_npz, resize_to, split
from ml.device import resolve_runtime
from ml.distill import DistillConfig, distill, train_label_only
from ml.evaluate import score_variant
from ml.export import export_onnx
from ml.quantize import quantize_static_int8
from ml.train import accuracy, fit_splits, seed_everything

SHAPE = (3, 64, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000, help="glyph images in all (10 classes)")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds (KD and label-only each)")
    parser.add_argument("--epochs", type=int, default=8, help="teacher and student epochs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU and ONNX Runtime threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (training only)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="on CUDA")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--optimizer", default="sgd", choices=("sgd", "adam"), help="students' optimiser (the teacher: adam)"
    )
    parser.add_argument("--lr", type=float, default=None, help="students' peak lr (sgd 0.2, adam 2e-3)")
    parser.add_argument("--cache", type=Path, default=Path(".edgefleet/datasets"))
    parser.add_argument("--npz", type=Path, default=None, help="a glyph .npz to read instead of --cache")
    args = parser.parse_args()
    student_lr = args.lr if args.lr is not None else (0.2 if args.optimizer == "sgd" else 2e-3)

    console = Console(width=160)
    torch.set_num_threads(args.threads)
    runtime = resolve_runtime(args.device, args.precision)
    started = time.perf_counter()
    npz = args.npz or synthetic.cached_npz(args.cache, n_per_class=math.ceil(args.images / 10))
    raw_x, raw_y, names = load_npz(npz)
    if len(raw_y) < args.images:
        parser.error(f"{npz} holds {len(raw_y)} images, fewer than --images {args.images}")
    keep = np.random.default_rng(0).permutation(len(raw_y))[: args.images]
    data = split(resize_to(raw_x[keep], SHAPE), raw_y[keep], names, name="synthetic-glyphs-64rgb", seed=0)
    console.print(
        f"synthetic-glyphs at {SHAPE}: {len(data.y_train)} train / {len(data.y_val)} val / "
        f"{len(data.y_test)} test, {args.epochs} epochs, {args.seeds} seed(s), {args.threads} thread(s), "
        f"training on {runtime.device} {runtime.precision} {runtime.gpu_name}, students {args.optimizer} "
        f"lr {student_lr}; "
        f"data ready in {time.perf_counter() - started:.0f} s"
    )
    times: dict[str, float] = {}

    seed_everything(0)
    teacher = build_model("torchvision:resnet18", role="teacher", input_shape=SHAPE, num_classes=10)
    began = time.perf_counter()
    teacher_settings = DistillConfig(epochs=args.epochs, lr=1e-3, batch_size=args.batch, patience=3, seed=0)
    fit_splits(teacher, data, teacher_settings, runtime=runtime)
    times["teacher"] = time.perf_counter() - began
    teacher_acc = accuracy(teacher, data.x_test, data.y_test)
    console.print(f"teacher ResNet-18: {100 * teacher_acc:.2f} % in {times['teacher']:.0f} s")

    rows: dict[str, list[float]] = {"kd": [], "label_only": [], "kd_onnx_fp32": [], "kd_int8": []}
    times |= {"kd": 0.0, "label_only": 0.0, "int8": 0.0}
    for seed in range(args.seeds):
        settings = DistillConfig(
            epochs=args.epochs,
            lr=student_lr,
            optimizer=args.optimizer,
            batch_size=args.batch,
            patience=3,
            seed=seed,
            student_layer="features.9",
            teacher_layer="layer3",
        )
        for kind in ("kd", "label_only"):
            seed_everything(seed)
            student = build_model(
                "torchvision:mobilenet_v3_small", role="student", input_shape=SHAPE, num_classes=10
            )
            began = time.perf_counter()
            if kind == "kd":
                distill(student, teacher, data, settings, runtime=runtime)
            else:
                train_label_only(student, data, settings, runtime=runtime)
            times[kind] += time.perf_counter() - began
            rows[kind].append(accuracy(student, data.x_test, data.y_test))
            if kind == "kd":
                began = time.perf_counter()
                with tempfile.TemporaryDirectory(prefix="edgefleet-acc-") as scratch:
                    fp32 = export_onnx(student, Path(scratch) / "student-fp32.onnx", SHAPE)
                    int8 = quantize_static_int8(fp32, Path(scratch) / "student-int8.onnx", data.x_train)
                    fp32_score, _ = score_variant(fp32, data.x_test, data.y_test, threads=args.threads)
                    int8_score, _ = score_variant(int8, data.x_test, data.y_test, threads=args.threads)
                rows["kd_onnx_fp32"].append(fp32_score.accuracy)
                rows["kd_int8"].append(int8_score.accuracy)
                times["int8"] += time.perf_counter() - began
        console.print(
            f"seed {seed}: KD {100 * rows['kd'][-1]:.2f} %, label-only {100 * rows['label_only'][-1]:.2f} %, "
            f"INT8 {100 * rows['kd_int8'][-1]:.2f} %"
        )

    def cell(values: list[float]) -> str:
        spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{100 * statistics.fmean(values):.2f}{spread}"

    table = Table(
        title=f"ResNet-18 → MobileNetV3-small on synthetic-glyphs 64×64 RGB ({args.images} images, "
        f"{args.epochs} epochs, {runtime.device} {runtime.precision})"
    )
    for column in ("model", "test accuracy %", "seeds", "wall s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row("teacher ResNet-18", f"{100 * teacher_acc:.2f}", "1", f"{times['teacher']:.0f}")
    table.add_row("student KD (torch)", cell(rows["kd"]), str(args.seeds), f"{times['kd']:.0f}")
    table.add_row(
        "student label-only", cell(rows["label_only"]), str(args.seeds), f"{times['label_only']:.0f}"
    )
    table.add_row("student KD, ONNX FP32", cell(rows["kd_onnx_fp32"]), str(args.seeds), "")
    table.add_row("student KD, static INT8", cell(rows["kd_int8"]), str(args.seeds), f"{times['int8']:.0f}")
    console.print(table)
    drop = 100 * (statistics.fmean(rows["kd_onnx_fp32"]) - statistics.fmean(rows["kd_int8"]))
    gain = 100 * (statistics.fmean(rows["kd"]) - statistics.fmean(rows["label_only"]))
    console.print(f"KD gain over label-only: {gain:+.2f} pp")
    console.print(
        f"  {'PASS' if drop <= 1.0 else 'MISS'}  INT8 vs its FP32 parent: {drop:+.2f} pp drop (goal ≤ 1.0)"
    )
    console.print(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
