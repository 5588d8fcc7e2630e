"""The dynamic batcher on real ONNX Runtime sessions: batches, delay, preferred sizes, bounds, swaps."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ota.serve.batcher import Batcher
from ota.serve.config import BatchingConfig
from ota.serve.errors import InferenceError, QueueFullError, RequestTimeoutError, ServeError
from ota.serve.metrics import ServeMetrics
from ota.serve.model import ModelCandidate, ServedModel, load_model
from tests.unit.serve.models import fixed_batch_of_one, linear, versioned


def served(tmp_path: Path, data: bytes, version: str = "1") -> ServedModel:
    path = tmp_path / f"m-{version}.onnx"
    path.write_bytes(data)
    return load_model(ModelCandidate(key=version, path=path, version=version), name="m", batch_sizes=(1, 8))


class Gate:
    """Holds executions of a real model until released (to fill the queue deterministically)."""

    def __init__(self, model: ServedModel) -> None:
        self.open = threading.Event()
        self.started = threading.Event()
        real = model.run

        def run(feeds):
            self.started.set()
            self.open.wait(10)
            return real(feeds)

        model.run = run  # type: ignore[method-assign]


async def gather(batcher: Batcher, xs: list[np.ndarray]):
    return await asyncio.gather(*(batcher.infer({"x": x}, len(x)) for x in xs))


def run_with(config: BatchingConfig, model: ServedModel, body):
    async def main():
        batcher = Batcher(config, lambda: model, ServeMetrics("m"))
        batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_requests_form_full_batches_with_each_row_its_own_result(tmp_path):
    data, _, _ = linear(1)
    model = served(tmp_path, data)
    xs = [np.random.default_rng(i).normal(size=(1, 8)).astype(np.float32) for i in range(16)]
    config = BatchingConfig(max_batch_size=8, max_queue_delay_us=200_000)
    results = run_with(config, model, lambda batcher: gather(batcher, xs))
    direct = ort.InferenceSession(data)
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result.outputs[0], direct.run(None, {"x": x})[0])
    # 16 requests arrive together: two full batches of 8, sent without waiting out the 200 ms delay.
    assert sorted(r.batch_rows for r in results) == [8] * 16


def test_after_the_delay_the_largest_preferred_size_is_sent(tmp_path):
    model = served(tmp_path, linear(1)[0])
    config = BatchingConfig(max_batch_size=8, max_queue_delay_us=20_000, preferred_batch_sizes=(2, 4))
    xs = [np.ones((1, 8), np.float32)] * 3
    results = run_with(config, model, lambda batcher: gather(batcher, xs))
    assert [r.batch_rows for r in results] == [2, 2, 1]


def test_multi_row_requests_are_split_back_and_never_exceed_the_maximum(tmp_path):
    data, w, b = linear(2)
    model = served(tmp_path, data)
    xs = [np.full((rows, 8), rows, np.float32) for rows in (3, 3, 3)]
    config = BatchingConfig(max_batch_size=8, max_queue_delay_us=50_000)
    results = run_with(config, model, lambda batcher: gather(batcher, xs))
    for x, result in zip(xs, results, strict=True):
        assert result.outputs[0].shape == (3, 4)
        np.testing.assert_allclose(result.outputs[0], x @ w + b, rtol=1e-5)
    assert [r.batch_rows for r in results] == [6, 6, 3]


def test_batching_off_runs_every_request_alone(tmp_path):
    model = served(tmp_path, linear(1)[0])
    config = BatchingConfig(enabled=False, max_batch_size=8)
    results = run_with(config, model, lambda batcher: gather(batcher, [np.ones((1, 8), np.float32)] * 6))
    assert [r.batch_rows for r in results] == [1] * 6


def test_a_full_queue_refuses_at_once_and_recovers(tmp_path):
    model = served(tmp_path, linear(1)[0])
    gate = Gate(model)
    config = BatchingConfig(max_batch_size=1, max_queue_size=2, max_queue_delay_us=0)
    x = np.ones((1, 8), np.float32)

    async def body(batcher: Batcher):
        running = asyncio.ensure_future(batcher.infer({"x": x}, 1))
        await asyncio.to_thread(gate.started.wait, 5)
        queued = [asyncio.ensure_future(batcher.infer({"x": x}, 1)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await batcher.infer({"x": x}, 1)
        gate.open.set()
        done = await asyncio.gather(running, *queued)
        again = await batcher.infer({"x": x}, 1)
        return done, again

    done, again = run_with(config, model, body)
    assert len(done) == 3 and again.outputs[0].shape == (1, 4)


def test_a_request_past_its_deadline_times_out_and_leaves_the_queue(tmp_path):
    model = served(tmp_path, linear(1)[0])
    gate = Gate(model)
    config = BatchingConfig(max_batch_size=4, max_queue_delay_us=0, request_timeout_s=5)
    x = np.ones((1, 8), np.float32)

    async def body(batcher: Batcher):
        running = asyncio.ensure_future(batcher.infer({"x": x}, 1))
        await asyncio.to_thread(gate.started.wait, 5)
        with pytest.raises(RequestTimeoutError):
            await batcher.infer({"x": x}, 1, timeout_s=0.05)
        assert batcher.queued == 1  # dropped when the next batch forms
        gate.open.set()
        await running
        return await batcher.infer({"x": x}, 1)

    assert run_with(config, model, body).batch_rows == 1


def test_running_batches_finish_on_the_old_model_and_the_next_takes_the_new(tmp_path):
    old, new = served(tmp_path, versioned(1), "1"), served(tmp_path, versioned(2), "2")
    gate = Gate(old)
    current = [old]
    x = np.ones((1, 8), np.float32)

    async def main():
        batcher = Batcher(
            BatchingConfig(max_queue_delay_us=0, instances=2), lambda: current[0], ServeMetrics("m")
        )
        batcher.start()
        first = asyncio.ensure_future(batcher.infer({"x": x}, 1))
        await asyncio.to_thread(gate.started.wait, 5)
        current[0] = new  # the swap, while the first batch runs on the old session
        second = await batcher.infer({"x": x}, 1)
        gate.open.set()
        results = [await first, second]
        await batcher.stop()
        return results

    first, second = asyncio.run(main())
    assert (first.model.version, float(first.outputs[0][0, 0])) == ("1", 1.0)
    assert (second.model.version, float(second.outputs[0][0, 0])) == ("2", 2.0)
    assert old.wait_idle(1) and new.wait_idle(1)


def test_an_execution_failure_fails_its_batch_only(tmp_path):
    model = served(tmp_path, linear(1)[0])
    config = BatchingConfig(max_queue_delay_us=0)

    async def body(batcher: Batcher):
        with pytest.raises(InferenceError):
            await batcher.infer({"x": np.ones((1, 7), np.float32)}, 1)  # unchecked shape: ORT refuses it
        return await batcher.infer({"x": np.ones((1, 8), np.float32)}, 1)

    assert run_with(config, model, body).outputs[0].shape == (1, 4)


def test_a_model_without_a_batch_dimension_runs_one_request_per_execution(tmp_path):
    path = tmp_path / "fixed.onnx"
    path.write_bytes(fixed_batch_of_one())
    model = load_model(ModelCandidate(key="f", path=path, version="1"), name="m", batch_sizes=(1, 8))
    assert not model.batchable
    xs = [np.full((1, 8), i, np.float32) for i in range(5)]
    results = run_with(
        BatchingConfig(max_batch_size=8, max_queue_delay_us=50_000), model, lambda b: gather(b, xs)
    )
    assert [r.batch_rows for r in results] == [1] * 5
    assert [float(r.outputs[0][0, 0]) for r in results] == [0.0, 2.0, 4.0, 6.0, 8.0]


@pytest.mark.parametrize(
    "knobs",
    [
        {"max_batch_size": 0},
        {"preferred_batch_sizes": (32,)},
        {"max_queue_size": 0},
        {"request_timeout_s": 0},
    ],
)
def test_bad_settings_are_refused(knobs):
    with pytest.raises(ServeError):
        BatchingConfig(**knobs)
