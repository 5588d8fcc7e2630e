"""End-to-end optimisation benchmark on scikit-learn digits: every variant against the torch teacher.

Trains a teacher and a distilled student briefly, builds every variant the pipeline can ship
(FP32, pruned, static / dynamic / QAT INT8), scores each on the held-out test split, benchmarks them
all in this one process (the torch-eager teacher included as the baseline) and prints the variants
table with ratios to the teacher, then the issue's goals with measured values.

Run: ``.venv/bin/python bench/pipeline_bench.py [--threads 1] [--runs 1000] [--epochs-scale 1.0]``.
It sits beside the other ``bench/`` scripts; ``make bench`` runs it. Needs no network and no stack.

Any architecture at a real input size (issue 10), latency and size only::

    .venv/bin/python bench/pipeline_bench.py --teacher torchvision:resnet50 \
        --student torchvision:mobilenet_v3_small --size 224

builds both networks with random-init weights (nothing can be downloaded here, so no pretrained weights and no
training: accuracies are chance and say nothing), makes every student variant the pipeline makes (FP32,
structured and unstructured pruned, static and dynamic INT8; QAT says why it is skipped), and benchmarks, at
1 thread and batch 1, the torch-eager teacher against each student variant on ONNX Runtime: P50, P99, size and
the ratios to the teacher, then the variant the noise-aware selection ships and the issue's goals for it.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ml.arch import build_model, count_macs_generic
from ml.benchmark import BenchmarkConfig, benchmark_variants, format_variant_table, ratios_to
from ml.config import PruneConfig, QuantizeConfig, TrainConfig
from ml.data import load_dataset, split
from ml.distill import DistillConfig, build_student, distill
from ml.gates import GateProfile, select_variant
from ml.nets import build_net, count_macs, count_parameters, specs_for_input
from ml.train import accuracy, fit, seed_everything
from ml.variants import build_variants
from ml.variants import candidates as variant_candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every epoch budget")
    parser.add_argument("--calibration", default="MinMax", choices=["MinMax", "Entropy", "Percentile"])
    parser.add_argument("--data", default="digits", help="digits, synthetic-glyphs, a folder or an .npz")
    parser.add_argument("--out", type=Path, default=None, help="keep the ONNX files here")
    parser.add_argument(
        "--teacher", default=None, help="e.g. torchvision:resnet50 (switches to the BYOM run)"
    )
    parser.add_argument("--student", default="torchvision:mobilenet_v3_small")
    parser.add_argument("--size", type=int, default=224, help="BYOM run: input is 3×SIZE×SIZE")
    parser.add_argument("--classes", type=int, default=10, help="BYOM run: number of classes")
    parser.add_argument("--images", type=int, default=80, help="BYOM run: random images (all splits)")
    args = parser.parse_args()
    if args.teacher is not None:
        byom_latency(args)
        return

    def epochs(n: int) -> int:
        return max(1, round(n * args.epochs_scale))

    console = Console(width=230)
    torch.set_num_threads(args.threads)
    seed_everything(0)
    x, y, names = load_dataset(args.data)
    data = split(x, y, names, name=args.data, seed=0)
    shape = data.input_shape
    train, val = (data.x_train, data.y_train), (data.x_val, data.y_val)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)

        console.print("[bold]training[/] teacher and distilled student (brief)")
        teacher_spec, student_spec = specs_for_input(shape)
        teacher = build_net(teacher_spec, in_channels=shape[0], num_classes=data.num_classes)
        fit(teacher, train, val, epochs=epochs(20), lr=2e-3, patience=4, seed=0)
        student = build_student(data, seed=0, spec=student_spec)
        distill(student, teacher, data, DistillConfig(epochs=epochs(30)))
        teacher.eval()
        student.eval()

        variants_dir = out / "variants"
        manifest = build_variants(
            teacher=teacher,
            student=student,
            splits=data,
            folder=variants_dir,
            prune=PruneConfig(fine_tune=TrainConfig(epochs=epochs(3), lr=1e-3, patience=2, seed=1)),
            quantize=QuantizeConfig(
                calibration_method=args.calibration,
                qat_train=TrainConfig(epochs=epochs(2), lr=5e-4, patience=2, seed=2),
            ),
            threads=args.threads,
            log=lambda line: console.print(f"[bold]{line}[/]"),
        )
        prune_table = Table(title="Pruning: student before → after (ONNX FP32, batch-1 P50 on ORT)")
        for column in ("method", "quantity", "before", "after", "after/before"):
            prune_table.add_column(column, justify="left" if column in ("method", "quantity") else "right")
        for label, quantity, before, after, ratio in manifest.pruning:
            prune_table.add_row(label, quantity, f"{before:,.4g}", f"{after:,.4g}", f"{ratio:.3f}")
        console.print(prune_table)
        teacher_acc = accuracy(teacher, data.x_test, data.y_test)
        candidates = variant_candidates(
            variants_dir, manifest, teacher=copy.deepcopy(teacher), teacher_accuracy=teacher_acc
        )

        config = BenchmarkConfig(threads=args.threads, runs=args.runs)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("benchmarking", total=len(candidates) * config.runs)
            done: dict[str, int] = {}

            def progress(name: str, finished: int, total: int) -> None:
                done[name] = finished
                bar.update(task, completed=sum(done.values()))

            results = benchmark_variants(candidates, data.x_test[:64], config=config, progress=progress)

    by_name = {r.name: r for r in results}
    console.print(format_variant_table(results, title=f"EdgeFleet pipeline variants on {args.data}"))
    teacher_eager = by_name["teacher-torch-eager"]
    student_int8 = by_name["student-int8-static"]
    teacher_fp32, teacher_int8 = by_name["teacher-fp32"], by_name["teacher-int8-static"]
    speed = ratios_to(teacher_eager, student_int8)["speedup_p50"]
    size = student_int8.size_bytes / teacher_fp32.size_bytes
    int8_gain = teacher_fp32.p50_ms / teacher_int8.p50_ms
    drop_pp = 100 * (teacher_acc - (student_int8.accuracy or 0.0))
    goals = [
        ("student INT8 static P50 vs torch-eager teacher P50", f"{speed:.1f}×", "≥ 15×", speed >= 15),
        ("student INT8 file / teacher FP32 ONNX file", f"1/{1 / size:.1f}", "≤ 1/30", size <= 1 / 30),
        ("teacher INT8 static vs teacher FP32 on ORT (P50)", f"{int8_gain:.2f}×", "≥ 2×", int8_gain >= 2),
        ("student INT8 accuracy drop vs teacher", f"{drop_pp:+.2f} pp", "≤ 0.5 pp", drop_pp <= 0.5),
    ]
    console.print(
        f"teacher: {count_parameters(teacher):,} params, {count_macs(teacher, shape):,} MACs; "
        f"student: {count_parameters(student):,} params"
    )
    for label, measured, goal, ok in goals:
        console.print(f"  {'PASS' if ok else 'MISS'}  {label}: {measured} (goal {goal})")
    profile = GateProfile(
        name="cpu-int8-small", min_accuracy=0.9, max_accuracy_drop_vs_teacher=0.005, max_size_kb=100
    )
    onnx_only = [r for r in results if r.runtime == "onnxruntime"]
    try:
        chosen = select_variant(profile, onnx_only, teacher_acc)
        console.print(
            f"profile {profile.name} selects [bold]{chosen.variant}[/] (P50 {chosen.p50_ms:.4f} ms)"
        )
    except Exception as exc:  # GateError: show the table, the benchmark itself succeeded
        console.print(str(exc))
    console.print(f"total wall time {time.perf_counter() - started:.0f} s")


def byom_latency(args: argparse.Namespace) -> None:
    """Torch-eager ``--teacher`` vs every ``--student`` variant on ORT, random-init weights, batch 1."""
    console = Console(width=200)
    torch.set_num_threads(args.threads)
    seed_everything(0)
    started = time.perf_counter()
    shape = (3, args.size, args.size)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(args.images, *shape)).astype(np.float32)
    y = np.arange(args.images) % args.classes
    data = split(x, y, [f"c{i}" for i in range(args.classes)], name="random", seed=0)
    console.print(
        f"[bold]{args.teacher} → {args.student}[/] at {shape}, {args.classes} classes, "
        f"{args.threads} thread(s), "
        "batch 1.\n[yellow]Random-init weights, no training (no weights can be downloaded here): the latency "
        "and size figures are real, the accuracies are chance and mean nothing.[/]"
    )
    teacher = build_model(args.teacher, role="teacher", input_shape=shape, num_classes=args.classes).eval()
    student = build_model(args.student, role="student", input_shape=shape, num_classes=args.classes).eval()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as scratch:
        folder = (args.out or Path(scratch)) / "variants"
        manifest = build_variants(
            teacher=teacher,
            student=student,
            splits=data,
            folder=folder,
            prune=PruneConfig(
                unstructured_sparsity=0.5,
                structured_ratio=0.25,
                fine_tune=TrainConfig(epochs=1, batch_size=16, patience=1, seed=1),
            ),
            quantize=QuantizeConfig(calibration_size=16, dynamic=False),
            student_int8=("int8-static", "int8-dynamic", "int8-qat"),
            threads=args.threads,
            log=lambda line: console.print(f"[bold]{line}[/]"),
        )
        teacher_acc = accuracy(teacher, data.x_test, data.y_test)
        every = variant_candidates(folder, manifest, teacher=teacher, teacher_accuracy=teacher_acc)
        chosen_candidates = [
            c for c in every if c.name == "teacher-torch-eager" or c.name.startswith("student")
        ]
        config = BenchmarkConfig(
            threads=args.threads,
            runs=args.runs,
            warmup=10,
            throughput_batch=4,
            throughput_runs=3,
            isolate=False,
        )
        console.print(f"benchmarking {len(chosen_candidates)} models, {config.runs} batch-1 runs each")
        results = benchmark_variants(chosen_candidates, data.x_test[:4], config=config)
    console.print(
        format_variant_table(results, title=f"{args.teacher} (torch eager) vs {args.student} on ORT")
    )
    eager = next(r for r in results if r.name == "teacher-torch-eager")
    ratio_table = Table(title="Ratios to the torch-eager teacher (1 thread, batch 1)")
    for column in ("variant", "P50 ms", "P99 ms", "size MiB", "P50 speed-up", "P99 speed-up", "size ratio"):
        ratio_table.add_column(column, justify="left" if column == "variant" else "right")
    for result in results:
        ratios = ratios_to(eager, result)
        ratio_table.add_row(
            result.name,
            f"{result.p50_ms:.3f}",
            f"{result.p99_ms:.3f}",
            f"{result.size_bytes / 2**20:.2f}",
            f"{ratios['speedup_p50']:.1f}×",
            f"{ratios['speedup_p99']:.1f}×",
            f"1/{1 / ratios['size_ratio']:.1f}",
        )
    console.print(ratio_table)
    console.print(
        f"teacher: {count_parameters(teacher):,} params, {count_macs_generic(teacher, shape):,} MACs; "
        f"student: {count_parameters(student):,} params, {count_macs_generic(student, shape):,} MACs"
    )
    # No accuracy gate: the weights are random. The noise-aware selection decides among the ORT variants.
    profile = GateProfile(name="latency-only", min_accuracy=0.0)
    chosen = select_variant(profile, [r for r in results if r.runtime == "onnxruntime"], teacher_acc)
    shipped = next(r for r in results if r.name == chosen.variant)
    ratios = ratios_to(eager, shipped)
    console.print(f"the selection ships [bold]{chosen.variant}[/]: {chosen.reason}")
    goals = [
        ("shipped variant P50 vs torch-eager teacher P50", f"{ratios['speedup_p50']:.1f}×", "≥ 20×", 20),
        (
            "shipped variant size vs torch-eager teacher size",
            f"1/{1 / ratios['size_ratio']:.1f}",
            "≤ 1/10",
            10,
        ),
    ]
    values = (ratios["speedup_p50"], 1 / ratios["size_ratio"])
    for (label, measured, goal, limit), value in zip(goals, values, strict=True):
        console.print(f"  {'PASS' if value >= limit else 'MISS'}  {label}: {measured} (goal {goal})")
    console.print(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
