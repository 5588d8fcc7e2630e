"""Latency, throughput, cold start, size and memory of every variant, against the torch-eager teacher.

Pipeline step 6 (see ARCHITECTURE.md): ``quantize``/``export`` write ONNX variants, ``evaluate``
scores them, this module times them, and ``gates`` picks the fastest one that passes.

How it measures (all in ONE process, so the baseline and the variants share the machine's state):

* Every ONNX session uses ``intra_op_num_threads = threads`` (config, default 1), one inter-op
  thread and sequential execution. The torch teacher runs under ``torch.set_num_threads(threads)``
  and ``torch.inference_mode()``.
* Batch-1 latency: ≥ 1000 timed runs per variant after a warm-up. The runs are split into
  ``rounds`` and the variants take turns round by round, so a burst of load from a neighbour
  process hits every variant rather than whichever was being timed. P50/P95/P99 come from all runs.
* Throughput: samples/s at batch 64.
* Cold start and memory: measured in a FRESH subprocess per variant (``isolate=True``, the
  default), the teacher too (its module is pickled for the probe): cold start is the time from
  session creation (or ``torch.load``) to the first result; ``peak_rss_mib`` is that process's
  high-water RSS, ``VmHWM`` (interpreter + runtime + model: what a device serving only this model
  needs), and ``rss_delta_mib`` the RSS growth caused by loading and running the model. In-process numbers
  would be flattered by allocator pools and kernel caches that earlier variants warmed; with
  ``isolate=False`` they are measured in-process anyway (faster, for tests) and marked as such.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from ml.errors import DataError, ExportError, MLError
from ml.evaluate import make_session

#: ``progress(variant, done, total)``: called as timed runs complete.
ProgressFn = Callable[[str, int, int], None]

TEACHER_NAME = "teacher-torch-eager"


@dataclass(frozen=True)
class BenchmarkConfig:
    """Knobs of a benchmark run; ``threads`` comes from the pipeline config."""

    threads: int = 1
    runs: int = 1000
    warmup: int = 100
    rounds: int = 5
    throughput_batch: int = 64
    throughput_runs: int = 30
    isolate: bool = True

    def __post_init__(self) -> None:
        if self.threads < 1 or self.runs < 1 or self.warmup < 0 or self.rounds < 1:
            raise DataError(f"invalid benchmark settings: {self}")
        if self.throughput_batch < 1 or self.throughput_runs < 1:
            raise DataError(f"invalid throughput settings: {self}")


@dataclass(frozen=True)
class Candidate:
    """One model to benchmark: an ONNX file, or (for the baseline) a torch module."""

    name: str
    onnx_path: Path | None = None
    torch_model: nn.Module | None = None
    accuracy: float | None = None
    agreement_with_parent: float | None = None
    parent: str | None = None
    size_bytes: int | None = None

    def __post_init__(self) -> None:
        if (self.onnx_path is None) == (self.torch_model is None):
            raise DataError(f"candidate {self.name!r} needs exactly one of onnx_path or torch_model")


@dataclass(frozen=True)
class BenchmarkResult:
    """What one variant measured. Times in milliseconds, sizes in bytes, RSS in MiB."""

    name: str
    runtime: str
    threads: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    throughput_sps: float
    cold_start_ms: float
    peak_rss_mib: float
    rss_delta_mib: float
    rss_method: str
    size_bytes: int
    accuracy: float | None = None
    agreement_with_parent: float | None = None
    parent: str | None = None
    latencies_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)
    p50_noise_ms: float = 0.0
    """How far the P50 moves on noise alone: max - min of the medians of the rounds (or of 5 consecutive
    chunks when there were fewer than 3 rounds). ``ml.gates.select_variant`` treats closer P50s as tied."""

    @property
    def size_kb(self) -> float:
        """File size in KiB (what the ``max_size_kb`` gate reads)."""
        return self.size_bytes / 1024.0

    def metrics(self) -> dict[str, float]:
        """Flat metrics for gates and MLflow (no ``None`` values)."""
        out = {
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "throughput_sps": self.throughput_sps,
            "cold_start_ms": self.cold_start_ms,
            "peak_rss_mib": self.peak_rss_mib,
            "rss_delta_mib": self.rss_delta_mib,
            "size_bytes": float(self.size_bytes),
            "size_kb": self.size_kb,
            "p50_noise_ms": self.p50_noise_ms,
        }
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        if self.agreement_with_parent is not None:
            out["agreement_with_parent"] = self.agreement_with_parent
        return out


def latency_samples_ms(session: Any, sample: np.ndarray, *, runs: int, warmup: int = 0) -> np.ndarray:
    """Time ``runs`` batch-1 calls of an ORT session after ``warmup`` untimed ones; milliseconds.

    Raises:
        DataError: The session rejects ``sample``.
    """
    name = session.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(sample, dtype=np.float32)}
    try:
        for _ in range(warmup):
            session.run(None, feed)
        times = np.empty(runs, dtype=np.float64)
        for i in range(runs):
            start = time.perf_counter_ns()
            session.run(None, feed)
            times[i] = time.perf_counter_ns() - start
    except Exception as exc:  # ORT InvalidArgument etc.
        raise DataError(f"the model rejected a sample of shape {sample.shape}: {exc}") from exc
    return times / 1e6


class _Runner:
    """Uniform ``run(batch)`` over an ORT session or a torch module."""

    def __init__(self, candidate: Candidate, threads: int) -> None:
        self.candidate = candidate
        self.session: Any = None
        self.input_name = ""
        if candidate.onnx_path is not None:
            self.session = make_session(candidate.onnx_path, threads=threads)
            self.input_name = self.session.get_inputs()[0].name
        else:
            assert candidate.torch_model is not None
            candidate.torch_model.eval()

    def __call__(self, batch: np.ndarray) -> None:
        if self.session is not None:
            self.session.run(None, {self.input_name: batch})
            return
        assert self.candidate.torch_model is not None
        with torch.inference_mode():
            self.candidate.torch_model(torch.from_numpy(batch))


def _torch_state_bytes(model: nn.Module) -> int:
    import io

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


_COLD_START_SCRIPT = r"""
import json, resource, sys, time
import numpy as np
import psutil
kind, path, threads, shape = sys.argv[1], sys.argv[2], int(sys.argv[3]), tuple(json.loads(sys.argv[4]))
sample = np.zeros(shape, dtype=np.float32)
if kind == "onnx":
    import onnxruntime as ort
else:
    import torch
    torch.set_num_threads(threads)
def peak_kib():
    # VmHWM is this address space's high-water mark. ru_maxrss is NOT usable here: Linux carries
    # the parent's watermark across fork+exec, so every probe would report the parent's peak.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
process = psutil.Process()
before = process.memory_info().rss
start = time.perf_counter()
if kind == "onnx":
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    session.run(None, {session.get_inputs()[0].name: sample})
else:
    model = torch.load(path, weights_only=False).eval()
    with torch.inference_mode():
        model(torch.from_numpy(sample))
elapsed = time.perf_counter() - start
print(json.dumps({
    "cold_start_ms": elapsed * 1e3,
    "rss_delta_bytes": process.memory_info().rss - before,
    "peak_rss_kib": peak_kib(),
}))
"""


@dataclass(frozen=True)
class _ColdStart:
    cold_start_ms: float
    peak_rss_mib: float
    rss_delta_mib: float


def _cold_start_isolated(candidate: Candidate, threads: int, shape: tuple[int, ...]) -> _ColdStart:
    with tempfile.TemporaryDirectory(prefix="edgefleet-cold-") as scratch:
        if candidate.onnx_path is not None:
            kind, path = "onnx", Path(candidate.onnx_path)
        else:
            # The whole module is pickled so the probe needs no knowledge of its architecture.
            kind, path = "torch", Path(scratch) / "model.pt"
            torch.save(candidate.torch_model, path)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            completed = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _COLD_START_SCRIPT,
                    kind,
                    str(path),
                    str(threads),
                    json.dumps(list(shape)),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
                env=env,
            )
            measured = json.loads(completed.stdout.strip().splitlines()[-1])
        except subprocess.CalledProcessError as exc:
            raise ExportError(f"cold-start probe of {candidate.name} failed: {exc.stderr[-2000:]}") from exc
        except (subprocess.SubprocessError, json.JSONDecodeError, IndexError, OSError) as exc:
            raise ExportError(f"cold-start probe of {candidate.name} failed: {exc}") from exc
    return _ColdStart(
        cold_start_ms=float(measured["cold_start_ms"]),
        peak_rss_mib=float(measured["peak_rss_kib"]) / 1024.0,
        rss_delta_mib=max(0.0, float(measured["rss_delta_bytes"])) / 2**20,
    )


def _cold_start_in_process(candidate: Candidate, threads: int, sample: np.ndarray) -> _ColdStart:
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    runner = _Runner(candidate, threads)
    runner(sample)
    elapsed = time.perf_counter() - start
    return _ColdStart(
        cold_start_ms=elapsed * 1e3,
        peak_rss_mib=process.memory_info().rss / 2**20,
        rss_delta_mib=max(0, process.memory_info().rss - before) / 2**20,
    )


def benchmark_variants(
    candidates: Sequence[Candidate],
    sample_batch: np.ndarray,
    *,
    config: BenchmarkConfig | None = None,
    progress: ProgressFn | None = None,
) -> list[BenchmarkResult]:
    """Benchmark every candidate in this process, round-robin, and return one result each.

    Args:
        candidates: ONNX variants and (usually first) the torch teacher as baseline.
        sample_batch: Real inputs, N×C×H×W; the first sample is the batch-1 input and the batch-64
            input is tiled from all of them.
        config: Threads, run counts, isolation of cold start.
        progress: Called as ``progress(name, done, total)`` after each round of each variant.

    Returns:
        Results in the order of ``candidates``.

    Raises:
        DataError: Empty candidate list, duplicate names or a malformed ``sample_batch``.
        ExportError: A variant cannot be loaded or its cold-start probe failed.
    """
    config = config or BenchmarkConfig()
    if not candidates:
        raise DataError("nothing to benchmark")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise DataError(f"candidate names must be unique, got {names}")
    if sample_batch.ndim != 4 or len(sample_batch) == 0:
        raise DataError(f"sample_batch must be non-empty N×C×H×W, got {sample_batch.shape}")
    samples = np.ascontiguousarray(sample_batch, dtype=np.float32)
    one = samples[:1]
    reps = -(-config.throughput_batch // len(samples))
    big = np.ascontiguousarray(np.tile(samples, (reps, 1, 1, 1))[: config.throughput_batch])

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        runners = {c.name: _Runner(c, config.threads) for c in candidates}
        for runner in runners.values():
            for _ in range(config.warmup):
                runner(one)
        per_round = -(-config.runs // config.rounds)
        latencies: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for round_index in range(config.rounds):
            for name, runner in runners.items():
                times = np.empty(per_round, dtype=np.float64)
                for i in range(per_round):
                    start = time.perf_counter_ns()
                    runner(one)
                    times[i] = time.perf_counter_ns() - start
                latencies[name].append(times / 1e6)
                if progress is not None:
                    progress(name, (round_index + 1) * per_round, config.rounds * per_round)

        results: list[BenchmarkResult] = []
        for candidate in candidates:
            runner = runners[candidate.name]
            runner(big)  # warm the batch-64 path (different kernels and buffers)
            began = time.perf_counter()
            for _ in range(config.throughput_runs):
                runner(big)
            throughput = config.throughput_runs * len(big) / (time.perf_counter() - began)
            if config.isolate:
                cold = _cold_start_isolated(candidate, config.threads, one.shape)
                rss_method = "fresh subprocess: peak = VmHWM, delta = RSS growth from load + first run"
            else:
                cold = _cold_start_in_process(candidate, config.threads, one)
                rss_method = "in-process: peak = current RSS of this process, delta = RSS growth"
            all_ms = np.concatenate(latencies[candidate.name])
            rounds = latencies[candidate.name]
            chunks = rounds if len(rounds) >= 3 else np.array_split(all_ms, min(5, len(all_ms)))
            medians = [float(np.median(chunk)) for chunk in chunks if len(chunk)]
            if candidate.size_bytes is not None:
                size = candidate.size_bytes
            elif candidate.onnx_path is not None:
                size = Path(candidate.onnx_path).stat().st_size
            else:
                assert candidate.torch_model is not None
                size = _torch_state_bytes(candidate.torch_model)
            results.append(
                BenchmarkResult(
                    name=candidate.name,
                    runtime="onnxruntime" if candidate.onnx_path is not None else "torch-eager",
                    threads=config.threads,
                    p50_ms=float(np.percentile(all_ms, 50)),
                    p95_ms=float(np.percentile(all_ms, 95)),
                    p99_ms=float(np.percentile(all_ms, 99)),
                    mean_ms=float(all_ms.mean()),
                    runs=len(all_ms),
                    throughput_sps=float(throughput),
                    cold_start_ms=cold.cold_start_ms,
                    peak_rss_mib=cold.peak_rss_mib,
                    rss_delta_mib=cold.rss_delta_mib,
                    rss_method=rss_method,
                    size_bytes=int(size),
                    accuracy=candidate.accuracy,
                    agreement_with_parent=candidate.agreement_with_parent,
                    parent=candidate.parent,
                    latencies_ms=tuple(float(v) for v in all_ms),
                    p50_noise_ms=max(medians) - min(medians) if medians else 0.0,
                )
            )
    except MLError:
        raise
    except Exception as exc:  # torch or ORT failing mid-run: report which, not a deep traceback
        raise DataError(f"benchmark failed: {type(exc).__name__}: {exc}") from exc
    finally:
        torch.set_num_threads(previous_threads)
    return results


def ratios_to(baseline: BenchmarkResult, result: BenchmarkResult) -> dict[str, float]:
    """``speedup_p50`` (baseline P50 / P50), ``speedup_p99``, ``size_ratio`` (size / baseline size)."""
    return {
        "speedup_p50": baseline.p50_ms / result.p50_ms if result.p50_ms else float("inf"),
        "speedup_p99": baseline.p99_ms / result.p99_ms if result.p99_ms else float("inf"),
        "throughput_ratio": result.throughput_sps / baseline.throughput_sps,
        "size_ratio": result.size_bytes / baseline.size_bytes if baseline.size_bytes else float("nan"),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def format_variant_table(
    results: Sequence[BenchmarkResult],
    *,
    baseline: str | None = None,
    title: str = "Variants",
) -> Table:
    """A rich table: accuracy, size, P50, P99, throughput and ratios to the baseline (the teacher).

    Args:
        results: Benchmark results, baseline included.
        baseline: Name of the baseline row; defaults to the torch-eager result, else the first row.
        title: Table title.

    Raises:
        DataError: ``results`` is empty or ``baseline`` names no row.
    """
    if not results:
        raise DataError("no results to tabulate")
    by_name = {r.name: r for r in results}
    if baseline is None:
        torch_rows = [r for r in results if r.runtime == "torch-eager"]
        base = torch_rows[0] if torch_rows else results[0]
    elif baseline in by_name:
        base = by_name[baseline]
    else:
        raise DataError(f"baseline {baseline!r} is not among {list(by_name)}")
    table = Table(title=f"{title} ({base.threads} thread(s); ratios vs {base.name})")
    for header in (
        "variant",
        "runtime",
        "accuracy",
        "agree w/ parent",
        "size KiB",
        "P50 ms",
        "P95 ms",
        "P99 ms",
        "samples/s @64",
        "cold start ms",
        "peak RSS MiB",
        "Δ RSS MiB",
        "× faster (P50)",
        "size ratio",
    ):
        table.add_column(header, justify="left" if header in ("variant", "runtime") else "right")
    for result in results:
        ratio = ratios_to(base, result)
        table.add_row(
            result.name,
            result.runtime,
            _fmt(None if result.accuracy is None else 100 * result.accuracy, ".2f"),
            _fmt(None if result.agreement_with_parent is None else 100 * result.agreement_with_parent, ".2f"),
            f"{result.size_kb:,.1f}",
            f"{result.p50_ms:.4f}",
            f"{result.p95_ms:.4f}",
            f"{result.p99_ms:.4f}",
            f"{result.throughput_sps:,.0f}",
            f"{result.cold_start_ms:.1f}",
            f"{result.peak_rss_mib:.1f}",
            f"{result.rss_delta_mib:.1f}",
            f"{ratio['speedup_p50']:.1f}×",
            f"1/{1 / ratio['size_ratio']:.1f}" if ratio["size_ratio"] < 1 else f"{ratio['size_ratio']:.2f}",
        )
    return table


def render_variant_table(results: Sequence[BenchmarkResult], *, baseline: str | None = None) -> str:
    """The variant table as plain text (for logs, model cards and MLflow artifacts).

    Raises:
        DataError: As :func:`format_variant_table`.
    """
    console = Console(width=200, color_system=None, force_terminal=False)
    with console.capture() as captured:
        console.print(format_variant_table(results, baseline=baseline))
    return captured.get()
