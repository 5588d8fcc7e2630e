"""Unit tests of ml.report: the plots are real PNGs and the model card carries the run's facts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.benchmark import BenchmarkResult
from ml.errors import DataError
from ml.gates import GateProfile, select_variant
from ml.report import plot_confusion_matrix, write_atomic, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _result(name: str, p50: float, size: int, acc: float, runtime: str = "onnxruntime") -> BenchmarkResult:
    rng = np.random.default_rng(len(name))
    samples = tuple(float(v) for v in rng.lognormal(np.log(p50), 0.1, 200))
    return BenchmarkResult(
        name=name,
        runtime=runtime,
        threads=1,
        p50_ms=float(np.median(samples)),
        p95_ms=float(np.percentile(samples, 95)),
        p99_ms=float(np.percentile(samples, 99)),
        mean_ms=float(np.mean(samples)),
        runs=len(samples),
        throughput_sps=1000.0 / p50,
        cold_start_ms=3.0,
        peak_rss_mib=2.0,
        rss_delta_mib=0.5,
        rss_method="test",
        size_bytes=size,
        accuracy=acc,
        latencies_ms=samples,
    )


def test_write_report_produces_pngs_and_card(tmp_path: Path) -> None:
    results = [
        _result("teacher-torch-eager", 0.8, 2_000_000, 0.99, runtime="torch-eager"),
        _result("student-fp32", 0.03, 135_000, 0.985),
        _result("student-int8-static", 0.02, 47_000, 0.984),
    ]
    selection = select_variant(GateProfile(name="cpu-int8-small", max_size_kb=100), results, 0.99)
    files = write_report(
        tmp_path / "report",
        title="digits-student",
        results=results,
        selections=[selection],
        confusion=np.diag([5, 6, 7]),
        class_names=["0", "1", "2"],
        teacher_accuracy=0.99,
        lineage={"git_commit": "abc123", "data_fingerprint": "f00d"},
        data_description="scikit-learn digits, 8×8 grey, 10 classes.",
        notes=["a note"],
    )
    for png in (files.confusion_matrix, files.latency_histogram, files.pareto):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    card = files.model_card.read_text()
    assert "# Model card: digits-student" in card
    assert "ships **student-int8-static**" in card
    assert "`abc123`" in card and "`f00d`" in card
    assert "student-fp32" in card and "FAIL" in card  # fp32 fails the size gate, shown in the table
    assert "a note" in card
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(f.name for f in files.all())


def test_confusion_matrix_shape_mismatch(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        plot_confusion_matrix(np.zeros((2, 3)), ["a", "b"], tmp_path / "c.png", title="x")
    assert not (tmp_path / "c.png").exists()


def test_write_atomic_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "card.md"
    write_atomic(target, b"old contents that are longer")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["card.md"]
