"""Step: time every variant on ONNX Runtime in one process, with the PyTorch-eager teacher as baseline."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from torch import nn
from zenml import log_metadata, step
from zenml.logger import get_logger

from ml.benchmark import BenchmarkConfig, render_variant_table
from ml.benchmark import benchmark_variants as run_benchmark
from ml.config import BenchmarkConfig as BenchmarkSection
from ml.data import DataSplits
from ml.variants import candidates, load_manifest
from steps.progress import count_progress

logger = get_logger(__name__)


@step
def benchmark_variants(
    splits: DataSplits,
    teacher: nn.Module,
    teacher_metrics: dict[str, float],
    variants: Path,
    config: BenchmarkSection,
) -> Annotated[list[dict[str, Any]], "benchmark"]:
    """P50/P95/P99 batch-1 latency, batch throughput, cold start, size and peak RSS of each variant."""
    manifest = load_manifest(variants)
    pool = candidates(variants, manifest, teacher=teacher, teacher_accuracy=teacher_metrics["test_accuracy"])
    settings = BenchmarkConfig(
        threads=config.threads,
        runs=config.runs,
        warmup=config.warmup,
        throughput_batch=config.throughput_batch,
        throughput_runs=config.throughput_runs,
    )
    done_by_variant: dict[str, int] = {}
    with count_progress("benchmark (batch-1 runs)", len(pool) * settings.runs) as advance:

        def progress(name: str, done: int, _total: int) -> None:
            advance(done - done_by_variant.get(name, 0))
            done_by_variant[name] = done

        results = run_benchmark(pool, splits.x_test[:64], config=settings, progress=progress)
    logger.info("\n%s", render_variant_table(results, baseline="teacher-torch-eager"))
    log_metadata({f"p50_ms.{r.name}": r.p50_ms for r in results})
    return [asdict(r) for r in results]
