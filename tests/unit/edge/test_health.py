"""Unit tests of ota.edge.health: self-test vectors format and the health check's verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from ota.core.selftest import SelfTestFormatError, load_vectors, save_vectors
from ota.edge.config import AgentConfig
from ota.edge.health import run_health_check

CONFIG = AgentConfig(warmup_runs=2, latency_runs=5, ort_intra_op_threads=1)


def _vectors(tmp_path, weights, bias, *, tolerance=1e-4, budget=None, shift=0.0, name="v.npz"):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(6, 8)).astype(np.float32)
    logits = inputs @ weights + bias + shift
    path = tmp_path / name
    save_vectors(
        path,
        inputs=inputs,
        expected_top1=np.argmax(logits, axis=1),
        expected_logits=logits,
        tolerance=tolerance,
        latency_budget_ms=budget,
    )
    return path


def test_good_model_passes_with_measurements(tmp_path, linear_model):
    model, weights, bias = linear_model(1)
    result = run_health_check(model, _vectors(tmp_path, weights, bias), config=CONFIG)
    assert result.ok, result.reason
    assert result.stage == "ok"
    assert result.samples == 6
    assert result.top1_agreement == 1.0
    assert result.max_abs_error is not None and result.max_abs_error < 1e-4
    assert result.latency_ms_p50 is not None and result.latency_ms_p50 > 0


def test_model_with_other_weights_fails_selftest(tmp_path, linear_model):
    _, weights, bias = linear_model(1)
    other_model, _, _ = linear_model(2)
    result = run_health_check(other_model, _vectors(tmp_path, weights, bias), config=CONFIG)
    assert not result.ok
    assert result.stage == "selftest"
    assert "tolerance" in (result.reason or "") or "top-1" in (result.reason or "")


def test_small_drift_within_tolerance_passes_and_beyond_fails(tmp_path, linear_model):
    model, weights, bias = linear_model(3)
    assert run_health_check(
        model, _vectors(tmp_path, weights, bias, tolerance=0.02, shift=0.01), config=CONFIG
    ).ok
    failed = run_health_check(
        model, _vectors(tmp_path, weights, bias, tolerance=0.005, shift=0.01, name="w.npz"), config=CONFIG
    )
    assert not failed.ok and failed.stage == "selftest"
    assert failed.max_abs_error == pytest.approx(0.01, abs=1e-4)


def test_latency_over_budget_fails(tmp_path, linear_model):
    model, weights, bias = linear_model(1)
    result = run_health_check(model, _vectors(tmp_path, weights, bias), config=CONFIG, latency_budget_ms=1e-6)
    assert not result.ok
    assert result.stage == "latency"
    assert result.latency_budget_ms == 1e-6


@pytest.mark.parametrize(("latency_budget_ms", "stage"), [(1e-6, "latency"), (1e6, "budget")])
def test_running_out_of_time_names_latency_when_the_calls_were_too_slow(
    tmp_path, linear_model, latency_budget_ms, stage
):
    # The time limit hits after the warm-up: the warm-up calls were timed, so a model that is over its
    # latency budget is reported as such, not as a mere time-out.
    model, weights, bias = linear_model(1)
    config = AgentConfig(warmup_runs=3, latency_runs=5, ort_intra_op_threads=1, health_check_budget_s=1e-9)
    result = run_health_check(
        model, _vectors(tmp_path, weights, bias), config=config, latency_budget_ms=latency_budget_ms
    )
    assert not result.ok and result.stage == stage, result
    assert "took longer than its 1e-09 s budget" in (result.reason or "")
    if stage == "latency":
        assert result.latency_ms_p50 is not None and result.latency_ms_p50 > latency_budget_ms


def test_budget_from_vectors_file_is_used(tmp_path, linear_model):
    model, weights, bias = linear_model(1)
    result = run_health_check(model, _vectors(tmp_path, weights, bias, budget=1e-6), config=CONFIG)
    assert result.stage == "latency"


def test_unloadable_model_fails_at_load(tmp_path, linear_model):
    _, weights, bias = linear_model(1)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    result = run_health_check(bad, _vectors(tmp_path, weights, bias), config=CONFIG)
    assert not result.ok and result.stage == "load"


def test_no_vectors_checks_load_and_latency_only(linear_model):
    model, _, _ = linear_model(1)
    result = run_health_check(model, None, config=CONFIG)
    assert result.ok and result.samples == 0


def test_malformed_vectors_fail_the_check_not_the_agent(tmp_path, linear_model):
    model, _, _ = linear_model(1)
    path = tmp_path / "v.npz"
    path.write_bytes(b"not a zip")
    result = run_health_check(model, path, config=CONFIG)
    assert not result.ok and result.stage == "vectors"


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"inputs": np.zeros((2, 8))}, "lack"),
        (
            {
                "inputs": np.zeros((2, 8)),
                "expected_top1": np.zeros(3, dtype=np.int64),
                "expected_logits": np.zeros((2, 4)),
                "tolerance": np.asarray(0.1),
            },
            "expected_top1",
        ),
        (
            {
                "inputs": np.zeros((2, 8)),
                "expected_top1": np.zeros(2, dtype=np.int64),
                "expected_logits": np.zeros((2, 4)),
                "tolerance": np.asarray(-1.0),
            },
            "tolerance",
        ),
        (
            {
                "inputs": np.zeros((2, 8)),
                "expected_top1": np.zeros(2, dtype=np.int64),
                "expected_logits": np.zeros((2, 4)),
                "tolerance": np.asarray([0.1, 0.2]),
            },
            "tolerance",
        ),
    ],
)
def test_load_vectors_rejects_bad_arrays(tmp_path, arrays, message):
    path = tmp_path / "v.npz"
    np.savez(path, **arrays)
    with pytest.raises(SelfTestFormatError, match=message):
        load_vectors(path, max_bytes=10_000_000)


def test_load_vectors_refuses_pickled_objects(tmp_path):
    path = tmp_path / "v.npz"
    np.savez(
        path,
        inputs=np.array([object()], dtype=object),
        expected_top1=np.zeros(1, dtype=np.int64),
        expected_logits=np.zeros((1, 4)),
        tolerance=np.asarray(0.1),
    )
    with pytest.raises(SelfTestFormatError):
        load_vectors(path, max_bytes=10_000_000)


def test_load_vectors_refuses_oversized_files(tmp_path, linear_model):
    _, weights, bias = linear_model(1)
    path = _vectors(tmp_path, weights, bias)
    with pytest.raises(SelfTestFormatError, match="more than"):
        load_vectors(path, max_bytes=10)
