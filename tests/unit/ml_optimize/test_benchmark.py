"""Unit tests of ml.benchmark: one-process measurement, percentiles, ratios, the rich table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.benchmark import (
    BenchmarkConfig,
    BenchmarkResult,
    Candidate,
    benchmark_variants,
    format_variant_table,
    ratios_to,
    render_variant_table,
)
from ml.errors import DataError
from ml.nets import ConvNet

SMALL = BenchmarkConfig(runs=40, warmup=5, rounds=2, throughput_runs=3)


def test_benchmarks_teacher_and_onnx_in_one_run(
    trained_student: ConvNet, student_onnx: Path, digits: Any
) -> None:
    progress: list[tuple[str, int, int]] = []
    results = benchmark_variants(
        [
            Candidate(name="teacher", torch_model=trained_student, accuracy=0.9),
            Candidate(name="student", onnx_path=student_onnx, accuracy=0.95, agreement_with_parent=0.99),
        ],
        digits.x_test[:16],
        config=SMALL,
        progress=lambda *a: progress.append(a),
    )
    teacher, student = results
    assert teacher.runtime == "torch-eager" and student.runtime == "onnxruntime"
    for result in results:
        assert result.runs == 40 and len(result.latencies_ms) == 40
        assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms <= max(result.latencies_ms)
        assert result.p50_ms == pytest.approx(float(np.median(result.latencies_ms)))
        assert result.throughput_sps > 0
        assert result.cold_start_ms > 0
        assert result.peak_rss_mib >= 0
    assert student.size_bytes == student_onnx.stat().st_size
    for result in results:
        assert result.rss_method.startswith("fresh subprocess")
        # A fresh interpreter with numpy and a runtime loaded peaks well above 20 MiB.
        assert result.peak_rss_mib > 20
        assert result.rss_delta_mib >= 0
    assert ("student", 40, 40) in progress
    metrics = student.metrics()
    assert metrics["size_kb"] == pytest.approx(student.size_bytes / 1024)
    assert metrics["accuracy"] == 0.95


def test_in_process_mode(student_onnx: Path, digits: Any) -> None:
    config = BenchmarkConfig(runs=10, warmup=1, rounds=1, throughput_runs=1, isolate=False)
    (result,) = benchmark_variants(
        [Candidate(name="s", onnx_path=student_onnx)], digits.x_test[:2], config=config
    )
    assert result.rss_method.startswith("in-process")


def _result(
    name: str, p50: float, size: int, runtime: str = "onnxruntime", acc: float | None = 0.9
) -> BenchmarkResult:
    return BenchmarkResult(
        name=name,
        runtime=runtime,
        threads=1,
        p50_ms=p50,
        p95_ms=p50 * 1.2,
        p99_ms=p50 * 1.5,
        mean_ms=p50,
        runs=1000,
        throughput_sps=1000 / p50,
        cold_start_ms=5.0,
        peak_rss_mib=1.0,
        rss_delta_mib=0.5,
        rss_method="test",
        size_bytes=size,
        accuracy=acc,
    )


def test_ratios_and_table() -> None:
    teacher = _result("teacher", 2.0, 3000, runtime="torch-eager")
    student = _result("student-int8", 0.1, 100)
    ratio = ratios_to(teacher, student)
    assert ratio["speedup_p50"] == pytest.approx(20.0)
    assert ratio["size_ratio"] == pytest.approx(1 / 30)
    assert ratio["throughput_ratio"] == pytest.approx(20.0)
    text = render_variant_table([teacher, student])
    assert "student-int8" in text and "20.0×" in text and "1/30.0" in text
    assert format_variant_table([student, teacher]).row_count == 2


def test_bad_requests_are_data_errors(student_onnx: Path, digits: Any) -> None:
    with pytest.raises(DataError):
        benchmark_variants([], digits.x_test)
    with pytest.raises(DataError, match="unique"):
        benchmark_variants(
            [Candidate(name="a", onnx_path=student_onnx), Candidate(name="a", onnx_path=student_onnx)],
            digits.x_test,
        )
    with pytest.raises(DataError):
        benchmark_variants([Candidate(name="a", onnx_path=student_onnx)], digits.x_test[:, 0])
    with pytest.raises(DataError):
        Candidate(name="neither")
    with pytest.raises(DataError):
        BenchmarkConfig(threads=0)
    with pytest.raises(DataError, match="baseline"):
        format_variant_table([_result("a", 1.0, 1)], baseline="missing")
