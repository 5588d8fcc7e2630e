"""Health check of a newly installed model, run before it is committed: load, warm up, self-test, time.

The release ships self-test vectors as a TUF target next to the model, in the format
:mod:`ota.core.selftest` owns (the pipeline writes it, the server checks it, this module reads it).

:func:`run_health_check` never raises for a bad model: it returns a :class:`HealthResult` whose ``stage``
and ``reason`` say what failed, and the installer rolls back and reports that reason. A model that crashes
the process is handled by the installer's boot counter instead.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ota.edge.config import AgentConfig

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort

    from ota.core.selftest import SelfTestVectors

# numpy, ONNX Runtime and the vectors reader (numpy again) are imported by the functions that use them, not
# here: the installer imports this module for HealthResult, and an idle agent that only polls must not pay
# for them (ONNX Runtime and numpy are about 40 MB of the idle agent's RSS; bench/agent_footprint.py).

# ONNX Runtime reports input types as strings; the vectors are cast to what the model expects.
_ORT_TYPE_NAMES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


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
    import onnxruntime as ort

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
    import numpy as np

    from ota.core.selftest import SelfTestFormatError, load_vectors

    started = time.monotonic()
    vectors: SelfTestVectors | None = None
    if vectors_path is not None:
        try:
            vectors = load_vectors(vectors_path, max_bytes=config.max_selftest_bytes)
        except SelfTestFormatError as exc:
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
    dtype_name = _ORT_TYPE_NAMES.get(model_input.type)
    if dtype_name is None:
        return HealthResult(
            ok=False, stage="load", reason=f"unsupported input type {model_input.type}", load_s=load_s
        )
    dtype = np.dtype(dtype_name)
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
