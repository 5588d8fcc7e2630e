"""Health check of a newly installed model, run before it is committed: load, warm up, self-test, time.

The release ships self-test vectors as a TUF target next to the model. Their format, defined here, is an
``.npz`` file (read with ``allow_pickle=False``) holding:

* ``inputs``: array ``(N, ...)``, one sample per row, fed to the model's first input with a batch of one;
* ``expected_top1``: int array ``(N,)``, the class index the pipeline's ONNX Runtime run produced;
* ``expected_logits``: array ``(N, ...)`` of the first output for each sample;
* ``tolerance``: scalar, the largest absolute difference allowed between produced and expected logits
  (INT8 kernels differ a little between ISAs, so it is not zero);
* optional ``latency_budget_ms``: scalar, the budget when the caller names none;
* optional ``min_top1_agreement``: scalar in [0, 1], default 1.0.

:func:`run_health_check` never raises for a bad model: it returns a :class:`HealthResult` whose ``stage``
and ``reason`` say what failed, and the installer rolls back and reports that reason. A model that crashes
the process is handled by the installer's boot counter instead.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ota.edge.config import AgentConfig
from ota.edge.errors import HealthCheckError

REQUIRED_KEYS = ("inputs", "expected_top1", "expected_logits", "tolerance")

# ONNX Runtime reports input types as strings; the vectors are cast to what the model expects.
_ORT_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


@dataclass(frozen=True)
class SelfTestVectors:
    """Parsed self-test vectors (see the module docstring for the file format)."""

    inputs: np.ndarray
    expected_top1: np.ndarray
    expected_logits: np.ndarray
    tolerance: float
    latency_budget_ms: float | None = None
    min_top1_agreement: float = 1.0


@dataclass(frozen=True)
class HealthResult:
    """Outcome of a health check.

    Attributes:
        ok: True when the model may be committed.
        stage: ``ok``, or the stage that failed: ``vectors``, ``load``, ``warmup``, ``selftest``,
            ``latency`` or ``budget``.
        reason: Human-readable reason on failure, None on success.
        load_s: Seconds spent creating the session.
        latency_ms_p50: Median latency of single-sample runs after warm-up.
        latency_budget_ms: The budget compared against.
        max_abs_error: Largest absolute logit difference over the vectors.
        top1_agreement: Fraction of vectors whose top-1 matched.
        samples: Number of vectors run.
    """

    ok: bool
    stage: str
    reason: str | None = None
    load_s: float = 0.0
    latency_ms_p50: float | None = None
    latency_budget_ms: float | None = None
    max_abs_error: float | None = None
    top1_agreement: float | None = None
    samples: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the result as a JSON-serialisable dict for status reports."""
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


def save_vectors(
    path: Path,
    *,
    inputs: np.ndarray,
    expected_top1: np.ndarray,
    expected_logits: np.ndarray,
    tolerance: float,
    latency_budget_ms: float | None = None,
    min_top1_agreement: float = 1.0,
) -> None:
    """Write self-test vectors in the format :func:`load_vectors` reads (for the pipeline and tests).

    Args:
        path: Destination ``.npz`` file.
        inputs: One sample per row.
        expected_top1: Expected class index per sample.
        expected_logits: Expected first output per sample.
        tolerance: Largest allowed absolute logit difference.
        latency_budget_ms: Optional latency budget.
        min_top1_agreement: Fraction of samples whose top-1 must match.

    Raises:
        HealthCheckError: If the arrays disagree on the number of samples.
    """
    if not len(inputs) == len(expected_top1) == len(expected_logits):
        raise HealthCheckError("inputs, expected_top1 and expected_logits need the same number of rows")
    arrays: dict[str, np.ndarray] = {
        "inputs": inputs,
        "expected_top1": np.asarray(expected_top1, dtype=np.int64),
        "expected_logits": np.asarray(expected_logits, dtype=np.float32),
        "tolerance": np.asarray(tolerance, dtype=np.float64),
        "min_top1_agreement": np.asarray(min_top1_agreement, dtype=np.float64),
    }
    if latency_budget_ms is not None:
        arrays["latency_budget_ms"] = np.asarray(latency_budget_ms, dtype=np.float64)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types the kwargs narrowly


def load_vectors(path: Path, *, max_bytes: int) -> SelfTestVectors:
    """Read and validate a self-test vectors file.

    Args:
        path: The ``.npz`` file.
        max_bytes: Refuse a file larger than this.

    Returns:
        The parsed vectors.

    Raises:
        HealthCheckError: If the file is missing, too large, not an npz, needs pickle, or its arrays are
            missing or inconsistent.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise HealthCheckError(f"cannot read self-test vectors {path}: {exc}") from exc
    if size > max_bytes:
        raise HealthCheckError(f"self-test vectors {path} are {size} bytes, more than {max_bytes}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in REQUIRED_KEYS if key not in archive.files]
            if missing:
                raise HealthCheckError(f"self-test vectors lack {', '.join(missing)}")
            arrays = {key: archive[key] for key in archive.files}
    except HealthCheckError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise HealthCheckError(f"self-test vectors {path} are not a valid npz file: {exc}") from exc
    inputs, top1, logits = arrays["inputs"], arrays["expected_top1"], arrays["expected_logits"]
    if inputs.ndim < 1 or len(inputs) == 0:
        raise HealthCheckError("self-test vectors hold no inputs")
    if top1.shape != (len(inputs),) or not np.issubdtype(top1.dtype, np.integer):
        raise HealthCheckError(f"expected_top1 must be an integer array of shape ({len(inputs)},)")
    if len(logits) != len(inputs):
        raise HealthCheckError("expected_logits must have one row per input")
    tolerance = _scalar(arrays, "tolerance")
    if tolerance is None or not tolerance >= 0:
        raise HealthCheckError("tolerance must be a scalar ≥ 0")
    agreement = _scalar(arrays, "min_top1_agreement")
    agreement = 1.0 if agreement is None else agreement
    if not 0.0 <= agreement <= 1.0:
        raise HealthCheckError("min_top1_agreement must lie in [0, 1]")
    budget = _scalar(arrays, "latency_budget_ms")
    if budget is not None and not budget > 0:
        raise HealthCheckError("latency_budget_ms must be > 0")
    return SelfTestVectors(
        inputs=inputs,
        expected_top1=top1,
        expected_logits=logits.astype(np.float64),
        tolerance=tolerance,
        latency_budget_ms=budget,
        min_top1_agreement=agreement,
    )


def _scalar(arrays: dict[str, np.ndarray], key: str) -> float | None:
    if key not in arrays:
        return None
    value = arrays[key]
    if value.shape != () or not np.issubdtype(value.dtype, np.number):
        raise HealthCheckError(f"{key} must be a numeric scalar")
    return float(value)


def make_session(
    model_path: Path, *, config: AgentConfig, providers: list[str] | None = None
) -> ort.InferenceSession:
    """Create an ONNX Runtime session with the agent's thread settings.

    Args:
        model_path: The ONNX file.
        config: The agent's limits (thread count).
        providers: Execution providers; ORT's available ones when None.

    Returns:
        A ready session.

    Raises:
        Exception: Whatever ONNX Runtime raises for an unloadable model (its error types are not
            public); :func:`run_health_check` turns it into a failed result.
    """
    options = ort.SessionOptions()
    if config.ort_intra_op_threads:
        options.intra_op_num_threads = config.ort_intra_op_threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(model_path), sess_options=options, providers=providers or ort.get_available_providers()
    )


def run_health_check(
    model_path: Path,
    vectors_path: Path | None,
    *,
    config: AgentConfig,
    latency_budget_ms: float | None = None,
    providers: list[str] | None = None,
) -> HealthResult:
    """Load ``model_path``, warm it up, run the self-test vectors and compare latency with the budget.

    Args:
        model_path: The newly installed model.
        vectors_path: The release's self-test vectors, or None when the release ships none (then only
            loading, warm-up on zeros and latency are checked).
        config: The agent's limits (time budget, warm-up and timing runs, default latency budget).
        latency_budget_ms: The hardware profile's budget; overrides the one in the vectors file.
        providers: Execution providers to use.

    Returns:
        The outcome; ``ok`` is False with ``stage`` and ``reason`` set on any failure.
    """
    started = time.monotonic()
    vectors: SelfTestVectors | None = None
    if vectors_path is not None:
        try:
            vectors = load_vectors(vectors_path, max_bytes=config.max_selftest_bytes)
        except HealthCheckError as exc:
            return HealthResult(ok=False, stage="vectors", reason=str(exc))
    budget = (
        latency_budget_ms
        or (vectors.latency_budget_ms if vectors else None)
        or config.default_latency_budget_ms
    )
    try:
        session = make_session(model_path, config=config, providers=providers)
    except Exception as exc:  # ORT's own error types are not public; any of them fails the model
        return HealthResult(ok=False, stage="load", reason=f"ONNX Runtime cannot load the model: {exc}")
    load_s = time.monotonic() - started
    model_input = session.get_inputs()[0]
    dtype = _ORT_TYPES.get(model_input.type)
    if dtype is None:
        return HealthResult(
            ok=False, stage="load", reason=f"unsupported input type {model_input.type}", load_s=load_s
        )
    if vectors is not None:
        sample = vectors.inputs[:1].astype(dtype)
    else:
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in model_input.shape]
        sample = np.zeros(shape, dtype=dtype)

    def over_budget() -> bool:
        return time.monotonic() - started > config.health_check_budget_s

    # Every call after the first is timed, so that a check that runs out of time can say whether the
    # model's latency was the reason (a model far over its latency budget is what usually gets there).
    call_ms: list[float] = []

    def timed_run(feed: np.ndarray) -> Any:
        tick = time.perf_counter()
        output = session.run(None, {model_input.name: feed})
        call_ms.append((time.perf_counter() - tick) * 1000.0)
        return output

    def out_of_time() -> HealthResult:
        return _out_of_time(config, load_s, call_ms[1:], budget)

    try:
        for _ in range(config.warmup_runs):
            timed_run(sample)
    except Exception as exc:  # any ORT error fails the model
        return HealthResult(ok=False, stage="warmup", reason=f"inference failed: {exc}", load_s=load_s)
    if over_budget():
        return out_of_time()

    max_error = 0.0
    agreement: float | None = None
    if vectors is not None:
        matches = 0
        for index in range(len(vectors.inputs)):
            try:
                output = timed_run(vectors.inputs[index : index + 1].astype(dtype))[0]
            except Exception as exc:  # any ORT error fails the model
                return HealthResult(
                    ok=False,
                    stage="selftest",
                    reason=f"inference failed on vector {index}: {exc}",
                    load_s=load_s,
                )
            produced = np.asarray(output, dtype=np.float64).reshape(-1)
            expected = vectors.expected_logits[index].reshape(-1)
            if produced.shape != expected.shape:
                return HealthResult(
                    ok=False,
                    stage="selftest",
                    reason=f"output has {produced.size} values, expected {expected.size}",
                    load_s=load_s,
                )
            if not np.all(np.isfinite(produced)):
                return HealthResult(ok=False, stage="selftest", reason=f"non-finite output on vector {index}")
            max_error = max(max_error, float(np.max(np.abs(produced - expected))))
            matches += int(int(np.argmax(produced)) == int(vectors.expected_top1[index]))
            if over_budget():
                return out_of_time()
        agreement = matches / len(vectors.inputs)
        if max_error > vectors.tolerance:
            return HealthResult(
                ok=False,
                stage="selftest",
                reason=f"logits differ by {max_error:.4g}, more than the tolerance {vectors.tolerance:.4g}",
                load_s=load_s,
                max_abs_error=max_error,
                top1_agreement=agreement,
                samples=len(vectors.inputs),
            )
        if agreement < vectors.min_top1_agreement:
            return HealthResult(
                ok=False,
                stage="selftest",
                reason=f"top-1 agrees on {agreement:.1%} of vectors, below {vectors.min_top1_agreement:.1%}",
                load_s=load_s,
                max_abs_error=max_error,
                top1_agreement=agreement,
                samples=len(vectors.inputs),
            )

    timings: list[float] = []
    for _ in range(config.latency_runs):
        tick = time.perf_counter()
        session.run(None, {model_input.name: sample})
        timings.append((time.perf_counter() - tick) * 1000.0)
    p50 = statistics.median(timings)
    measured = HealthResult(
        ok=True,
        stage="ok",
        load_s=load_s,
        latency_ms_p50=p50,
        latency_budget_ms=budget,
        max_abs_error=max_error if vectors is not None else None,
        top1_agreement=agreement,
        samples=0 if vectors is None else len(vectors.inputs),
    )
    if p50 > budget:
        return dataclasses.replace(
            measured,
            ok=False,
            stage="latency",
            reason=f"median latency {p50:.2f} ms exceeds the budget {budget:.2f} ms",
        )
    if over_budget():
        return out_of_time()
    return measured


def _out_of_time(config: AgentConfig, load_s: float, call_ms: list[float], budget: float) -> HealthResult:
    limit = f"health check took longer than its {config.health_check_budget_s} s budget"
    p50 = statistics.median(call_ms) if call_ms else None
    if p50 is not None and p50 > budget:
        return HealthResult(
            ok=False,
            stage="latency",
            reason=f"median latency {p50:.2f} ms exceeds the budget {budget:.2f} ms ({limit})",
            load_s=load_s,
            latency_ms_p50=p50,
            latency_budget_ms=budget,
        )
    return HealthResult(ok=False, stage="budget", reason=limit, load_s=load_s)
