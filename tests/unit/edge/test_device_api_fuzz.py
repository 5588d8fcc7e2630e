"""Fuzz test of the agent's device API client (issue 9, F: acceptance).

Every device endpoint (enrolment, challenge, token, assignment, reports, TUF metadata, target download) in
turn answers random bytes, truncated JSON, random JSON, the right document with wrong-typed values, or a
100 MB stream. The poll loop must return a result every time, and tracemalloc's peak over the whole fuzz
must stay under :data:`MEMORY_BOUND`: a streamed body is cut off at its endpoint's cap, never buffered.
"""

from __future__ import annotations

import json
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ota.edge.agent import PollResult

from .device_server import ENDPOINTS, DeviceServerSimulator, make_agent

MIB = 1024 * 1024
MEMORY_BOUND = 16 * MIB
HUGE_BODY = 100 * 1000 * 1000  # 100 MB: long enough that buffering it would blow the bound many times over

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
mutations = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=4096)),
    st.tuples(st.just("truncate"), st.floats(min_value=0.0, max_value=0.99)),
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("wrong-types"), json_values),
    st.tuples(st.just("huge"), st.none()),
)


class HugeStream(httpx.SyncByteStream):
    """A 100 MB body made on the fly, in 64 KiB chunks; counts what the client pulled."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        chunk = b"{" * 65536
        while self.pulled < HUGE_BODY:
            self.pulled += len(chunk)
            yield chunk


def _mutate(kind: str, value: object, honest: bytes) -> bytes:
    if kind == "bytes":
        assert isinstance(value, bytes)
        return value
    if kind == "truncate":
        assert isinstance(value, float)
        return honest[: int(len(honest) * value)]
    if kind == "json":
        return json.dumps(value).encode()
    try:
        document = json.loads(honest)
    except ValueError:
        document = None
    if isinstance(document, dict):  # wrong-types: the right keys, drawn values
        return json.dumps(dict.fromkeys(document, value)).encode()
    return json.dumps(value).encode()


PULLED: list[int] = []


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(endpoint=st.sampled_from(ENDPOINTS), mutation=mutations)
def _fuzz_one(endpoint: str, mutation: tuple[str, object]) -> None:
    kind, value = mutation
    sim = DeviceServerSimulator(model=b"m" * 4096)

    def fuzzed(request: httpx.Request) -> httpx.Response:
        honest = sim.honest(request)
        status, body = honest.status_code, honest.read()
        if kind == "huge":
            stream = HugeStream()
            PULLED.append(0)

            def counted() -> Iterator[bytes]:
                for chunk in stream:
                    PULLED[-1] = stream.pulled
                    yield chunk

            return httpx.Response(status, stream=_Iter(counted()))
        return httpx.Response(status, stream=httpx.ByteStream(_mutate(kind, value, body)))

    sim.override[endpoint] = fuzzed
    with tempfile.TemporaryDirectory() as directory:
        agent = make_agent(Path(directory), sim)
        for _ in range(2):
            result = agent.poll_once()  # must return, whatever was served
            assert isinstance(result, PollResult)
            assert result.delay_s >= agent.config.poll_interval_min_s
        agent.client.close()


class _Iter(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks


def test_fuzzing_every_device_endpoint_never_stops_the_loop_and_memory_stays_bounded():
    PULLED.clear()
    # The agent imports ONNX Runtime and numpy on first use (enrolment's hardware details, the health
    # check), not at start: import them before tracing, so the bound measures answers, not module imports.
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401

    tracemalloc.start()
    try:
        _fuzz_one()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"tracemalloc peak over the fuzz: {peak / MIB:.1f} MiB (bound {MEMORY_BOUND // MIB} MiB); "
        f"largest pull of a 100 MB body: {max(PULLED, default=0) / MIB:.2f} MiB over {len(PULLED)} bodies"
    )
    assert PULLED, "no huge body was served"
    assert max(PULLED) < 8 * MIB  # every 100 MB body was cut off at its cap (≤ 4 MiB + a chunk)
    assert peak < MEMORY_BOUND
