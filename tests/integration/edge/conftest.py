"""Fixtures for the edge agent's integration tests: a real local HTTP server that misbehaves on demand.

:class:`FaultyServer` serves in-memory files over HTTP/1.1 with Range support, from a thread, and can cut
connections after a number of bytes, answer 500 for a while, send more bytes than the file (endless
data), or trickle bytes (slow retrieval). It counts every body byte it sends, so tests can measure how
many bytes were downloaded twice.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ota.server.rollout_machine import ACTIVE_STATES, RolloutState
from ota.server.testing import free_port

# Rollout states in which a rollout no longer holds its selector.
SETTLED = frozenset(s.value for s in RolloutState) - {s.value for s in ACTIVE_STATES}


@dataclass
class Behaviour:
    """How the server treats one path."""

    cut_after: int | None = None  # close the connection after this many body bytes per response
    cut_times: int = 1_000_000  # how many responses get cut
    fail_first: int = 0  # answer `fail_status` to this many requests first
    fail_status: int = 500
    endless: bool = False  # ignore the length and keep sending
    trickle_delay_s: float = 0.0  # sleep between 1-byte writes
    ignore_range: bool = False
    status: int | None = None  # always answer this status


@dataclass
class FaultyServer:
    """A threaded HTTP server over in-memory files, with fault injection and byte counting."""

    files: dict[str, bytes] = field(default_factory=dict)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[float, str, int]] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def add(self, path: str, data: bytes, behaviour: Behaviour | None = None) -> str:
        self.files["/" + path.lstrip("/")] = data
        self.behaviours["/" + path.lstrip("/")] = behaviour or Behaviour()
        return self.url(path)

    def sent(self, path: str) -> int:
        return self.bytes_sent.get("/" + path.lstrip("/"), 0)


def _handler_for(server_state: FaultyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            data = server_state.files.get(path)
            behaviour = server_state.behaviours.get(path, Behaviour())
            with server_state.lock:
                index = sum(1 for _, p, _ in server_state.requests if p == path)
            if data is None:
                self._answer(404, b"not found")
                return
            if behaviour.status is not None:
                self._record(path, behaviour.status)
                self._answer(behaviour.status, b"status")
                return
            if index < behaviour.fail_first:
                self._record(path, behaviour.fail_status)
                self._answer(behaviour.fail_status, b"try later")
                return
            start = 0
            header = self.headers.get("Range")
            match = re.match(r"bytes=(\d+)-$", header or "")
            if match and not behaviour.ignore_range:
                start = int(match.group(1))
                if start >= len(data):
                    self._record(path, 416)
                    self._answer(416, b"")
                    return
                status = 206
            else:
                status = 200
            body = data[start:]
            self._record(path, status)
            self.send_response(status)
            if behaviour.endless:
                self.send_header("Connection", "close")
            else:
                self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if behaviour.endless:
                self._write(path, body)
                for _ in range(200):
                    self._write(path, b"\x00" * 65536)
                self.close_connection = True
                return
            if behaviour.trickle_delay_s:
                for offset in range(len(body)):
                    self._write(path, body[offset : offset + 1])
                    time.sleep(behaviour.trickle_delay_s)
                return
            with server_state.lock:
                cuts_done = sum(1 for _, p, s in server_state.requests if p == path and s in (200, 206)) - 1
            if behaviour.cut_after is not None and cuts_done < behaviour.cut_times:
                self._write(path, body[: behaviour.cut_after])
                self.wfile.flush()
                self.close_connection = True
                # Shut the socket down so the client sees a truncated body now, not at a timeout.
                self.connection.shutdown(2)
                return
            self._write(path, body)

        def _record(self, path: str, status: int) -> None:
            with server_state.lock:
                server_state.requests.append((time.monotonic(), path, status))

        def _write(self, path: str, chunk: bytes) -> None:
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            with server_state.lock:
                server_state.bytes_sent[path] = server_state.bytes_sent.get(path, 0) + len(chunk)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def faulty_server() -> Iterator[FaultyServer]:
    """Start a :class:`FaultyServer` on a free port for one test."""
    state = FaultyServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]  # cut sockets are the point
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---- a live OTA server (ota.server) for end-to-end agent tests ----------------------------------------


@dataclass
class LiveServer:
    """A running OTA server plus the tokens a test needs."""

    url: str
    home: Path
    admin_token: str
    provisioning_token: str
    ctx: Any
    # None: a real server on a socket; else the in-process transport that serves the app (in_process.py).
    transport: httpx.BaseTransport | None = None

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, transport=self.transport)

    def agent_transport(self) -> httpx.BaseTransport:
        """What the agent's client should send through to reach this server."""
        return self.transport if self.transport is not None else httpx.HTTPTransport()

    def publish(self, data: bytes, *, model: str, version: str, profile: str) -> dict[str, Any]:
        with self.http() as http:
            answer = http.put(
                "/v1/releases",
                params={"model": model, "version": version, "profile": profile},
                content=data,
                headers=self.admin | {"Content-Type": "application/octet-stream"},
            )
        assert answer.status_code == 201, answer.text
        return answer.json()

    def wait_rollouts_settled(self, timeout: float = 30.0) -> None:
        """Wait until no rollout is running: the server completes one on its background tick, not at once.

        Starting the next rollout before the tick has completed the last one is a 409 by design
        (one active rollout per selector), so a test that rolls out twice waits here in between.
        """
        deadline = time.monotonic() + timeout
        while True:
            running = [r["id"] for r in self.get("/v1/rollouts") if r["state"] not in SETTLED]
            if not running:
                return
            assert time.monotonic() < deadline, f"rollouts {running} did not settle in {timeout} s"
            time.sleep(0.1)

    def rollout(self, release_id: str, **body: Any) -> dict[str, Any]:
        self.wait_rollouts_settled()
        payload = {"release_id": release_id, "phases": [{"percent": 100}], **body}
        with self.http() as http:
            answer = http.post("/v1/rollouts", json=payload, headers=self.admin)
        assert answer.status_code == 201, answer.text
        return answer.json()

    def get(self, path: str) -> Any:
        with self.http() as http:
            answer = http.get(path, headers=self.admin)
        assert answer.status_code == 200, answer.text
        return answer.json()


def server_settings(home: Path, *, port: int, public_base_url: str | None = None, **overrides: Any) -> Any:
    """The OTA server settings of the edge tests (both tiers): fast ticks, no soak, no jitter."""
    from ota.server.settings import load_settings

    return load_settings(
        home=home,
        token_secret="edge-integration-secret",
        port=port,
        public_base_url=public_base_url or f"http://127.0.0.1:{port}",
        poll_jitter=0,
        cache_refresh_interval=0.1,
        rollout_tick_interval=0.2,
        resign_check_interval=3600,
        # Tests run on a fast clock: phases need their successes, not a minute's soak.
        rollout_min_soak_seconds=0,
        **overrides,
    )


@contextmanager
def serve_ota(
    home: Path, *, port: int, public_base_url: str | None = None, label: str = "edge-it", **overrides: Any
) -> Iterator[LiveServer]:
    """Run the real OTA server (SQLite + local blobs) on uvicorn in a thread, on ``port``, until exit.

    ``overrides`` are more settings (the MQTT tests pass the broker's).
    """
    from ota.server.context import build_context
    from ota.server.testing import serve_in_thread

    ctx = build_context(server_settings(home, port=port, public_base_url=public_base_url, **overrides))
    with serve_in_thread(ctx, label=label) as served:
        yield LiveServer(served.url, home, served.admin_token, served.provisioning_token, ctx)


@pytest.fixture
def ota_server(tmp_path: Path) -> Iterator[LiveServer]:
    """Start the real OTA server (SQLite + local blobs) on uvicorn in a thread, for one test."""
    with serve_ota(tmp_path / "server", port=free_port()) as server:
        yield server
