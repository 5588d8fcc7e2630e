"""Unit tests of the agent's device API client (ota.edge.api) and the poll loop above it (issue 9, A and B).

A 200 answer that is not the expected document, from any device endpoint, must come back from
``Agent.poll_once`` as a result (the loop backs off), never as an exception; every body is capped while it
streams; and no exception type but a deliberate stop ends ``Agent.run``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ota.edge.api import SMALL_ANSWER_MAX_BYTES, DeviceApi
from ota.edge.errors import AnswerFormatError, AnswerTooLargeError, ApiTransportError, HttpStatusError
from ota.edge.identity import DeviceIdentity

from .device_server import ENDPOINTS, DeviceServerSimulator, make_agent

CHUNK = 65536


class BigStream(httpx.SyncByteStream):
    """A body of ``total`` bytes in 64 KiB chunks (endless for practical purposes); counts what was pulled."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.pulled < self.total:
            self.pulled += CHUNK
            yield b"x" * CHUNK


def _honest_body(sim: DeviceServerSimulator, request: httpx.Request) -> tuple[int, bytes]:
    answer = sim.honest(request)
    return answer.status_code, answer.read()


def _wrong_types(body: bytes) -> bytes:
    document = json.loads(body)
    if isinstance(document, dict):
        return json.dumps({key: [] for key in document}).encode()
    return b"[]"


BAD_BODIES: dict[str, Callable[[bytes], bytes]] = {
    "html": lambda body: b"<html><body>Welcome to the hotel wifi</body></html>",
    "json-list": lambda body: b"[1, 2, 3]",
    "empty-object": lambda body: b"{}",
    "wrong-types": _wrong_types,
    "truncated": lambda body: body[: len(body) // 2],
    "not-utf8": lambda body: b"\xff\xfe\x00\x81garbage",
}


def _serve_bad(sim: DeviceServerSimulator, endpoint: str, change: Callable[[bytes], bytes]) -> None:
    def bad(request: httpx.Request) -> httpx.Response:
        status, body = _honest_body(sim, request)
        if status >= 400:
            return httpx.Response(status)
        return httpx.Response(status, stream=httpx.ByteStream(change(body)))

    sim.override[endpoint] = bad


@pytest.mark.parametrize("kind", list(BAD_BODIES))
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_malformed_answer_from_any_endpoint_never_escapes_poll_once(
    tmp_path: Path, endpoint: str, kind: str
):
    sim = DeviceServerSimulator()
    agent = make_agent(tmp_path, sim)
    _serve_bad(sim, endpoint, BAD_BODIES[kind])
    results = [agent.poll_once() for _ in range(2)]  # raises on the old code (JSONDecodeError, KeyError, …)
    assert all(r.delay_s >= agent.config.poll_interval_min_s for r in results)
    if endpoint != "reports":  # a report answer does not stop an install; the report stays queued
        assert results[0].outcome in {"error", "failed"}, results[0]
    # The server heals (and the director re-decides, since bad TUF data or a bad target is remembered as a
    # failed assignment): the same agent carries on and installs.
    sim.override.clear()
    sim.reassign(counter=2)
    outcomes = [agent.poll_once().outcome for _ in range(3)]
    assert agent.installer.state().committed is not None, outcomes


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_huge_answer_from_any_endpoint_is_cut_off_at_its_cap(tmp_path: Path, endpoint: str):
    sim = DeviceServerSimulator()
    agent = make_agent(tmp_path, sim)
    streams: list[BigStream] = []

    def huge(request: httpx.Request) -> httpx.Response:
        status, _ = _honest_body(sim, request)
        stream = BigStream(64 * 1024 * 1024)
        streams.append(stream)
        return httpx.Response(status, stream=stream)

    sim.override[endpoint] = huge
    result = agent.poll_once()
    assert result.outcome in {"error", "failed", "installed"}, result
    assert streams, "the endpoint was never called"
    # Each endpoint's own cap: 64 KiB for the small API answers, max_metadata_bytes for the assignment,
    # ngclient's per-role caps (≤ 4 MiB) for TUF metadata, the signed length for the target.
    cap = {"assignment": agent.config.max_metadata_bytes, "metadata": 4 * agent.config.max_metadata_bytes}
    limit = cap.get(endpoint, SMALL_ANSWER_MAX_BYTES)
    assert max(s.pulled for s in streams) <= limit + CHUNK, [s.pulled for s in streams]


# ---- DeviceApi on its own: every failure is a typed edge error ----------------------------------------


def _api(tmp_path: Path, handler: Callable[[httpx.Request], httpx.Response]) -> DeviceApi:
    return DeviceApi(
        server_url="http://ota.test",
        device_id="dev-1",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        signer=DeviceIdentity(tmp_path).load_or_create_key(),
        assignment_max_bytes=1024,
    )


def test_an_announced_oversized_answer_is_refused_before_reading(tmp_path: Path):
    stream = BigStream(10 * 1024 * 1024)
    api = _api(tmp_path, lambda r: httpx.Response(200, headers={"content-length": "99999999"}, stream=stream))
    with pytest.raises(AnswerTooLargeError) as caught:
        api.challenge()
    assert caught.value.attack
    assert stream.pulled == 0


def test_an_assignment_over_its_cap_is_refused_while_streaming(tmp_path: Path):
    later = "2099-01-01T00:00:00Z"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/challenge"):
            return httpx.Response(200, json={"nonce": "n", "expires": later})
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"token": "t", "expires": later})
        return httpx.Response(200, stream=BigStream(10 * 1024 * 1024))

    with pytest.raises(AnswerTooLargeError):
        _api(tmp_path, handler).assignment(current_sha256=None, etag=None)


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (lambda r: httpx.Response(200, content=b"<html>portal</html>"), AnswerFormatError),
        (lambda r: httpx.Response(200, json=["nonce"]), AnswerFormatError),
        (lambda r: httpx.Response(200, json={"nonce": "n"}), AnswerFormatError),
        (
            lambda r: httpx.Response(200, json={"nonce": 7, "expires": "2099-01-01T00:00:00Z"}),
            AnswerFormatError,
        ),
        (
            lambda r: httpx.Response(200, content=b"x", headers={"content-encoding": "gzip"}),
            AnswerFormatError,
        ),
        (lambda r: httpx.Response(502, content=b"bad gateway"), HttpStatusError),
    ],
    ids=["html", "list", "missing-key", "wrong-type", "gzip", "502"],
)
def test_challenge_answers_map_to_the_edge_error_tree(tmp_path: Path, handler, error):
    with pytest.raises(error) as caught:
        _api(tmp_path, handler).challenge()
    assert not caught.value.attack


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("down"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("junk")],
    ids=lambda e: type(e).__name__,
)
def test_transport_failures_map_to_api_transport_error(tmp_path: Path, exc: Exception):
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(ApiTransportError):
        _api(tmp_path, handler).challenge()


# ---- the last resort: nothing but a deliberate stop ends the loop -------------------------------------


def test_an_unforeseen_exception_backs_off_and_the_run_loop_keeps_going(tmp_path: Path):
    sim = DeviceServerSimulator()
    agent = make_agent(tmp_path, sim)

    def bug(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug nobody foresaw")

    sim.override["challenge"] = bug

    class CountingStop(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(timeout or 0.0)
            return len(self.waits) >= 5

    stop = CountingStop()
    result = agent.run(stop=stop)
    assert len(stop.waits) == 5  # five polls, each ended by a back-off, not by the exception
    assert result.outcome == "error" and "RuntimeError" in (result.detail or "")
    assert all(wait >= agent.config.poll_interval_min_s for wait in stop.waits)


def test_keyboard_interrupt_still_stops_the_loop(tmp_path: Path):
    sim = DeviceServerSimulator()
    agent = make_agent(tmp_path, sim)

    def interrupt(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt

    sim.override["enrol"] = interrupt
    with pytest.raises(KeyboardInterrupt):
        agent.poll_once()
