"""Issue 9, item 4: a client that dribbles a request's headers (slowloris) is disconnected within the
configured header timeout, on both uvicorn HTTP protocols; normal requests, kept-alive ones included, work."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from ota.server.serving import uvicorn_config

from .conftest import live_server, settings_for

HEADER_TIMEOUT = 1.0


def _dribble(url: str, *, seconds: float) -> tuple[float, bytes]:
    """Send a partial request header one byte at a time; return when the server closed and what it sent."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    received = b""
    with socket.create_connection((host, int(port)), timeout=seconds) as sock:
        sock.settimeout(0.2)
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # reset by the server: closed
                break
            try:
                chunk = sock.recv(4096)
                if chunk == b"":
                    break
                received += chunk
            except TimeoutError:
                pass
            if time.monotonic() - started > seconds:
                break
    return time.monotonic() - started, received


@pytest.mark.parametrize("protocol", ["h11", "httptools"])
def test_slow_headers_are_cut_off_within_the_header_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    import ota.server.serving as serving

    chosen = {"h11": "H11WithHeaderDeadline", "httptools": "HttpToolsWithHeaderDeadline"}[protocol]
    monkeypatch.setattr(serving, "PROTOCOL", f"ota.server.serving:{chosen}")
    settings = settings_for(tmp_path, header_timeout=HEADER_TIMEOUT, keep_alive_timeout=5)
    with live_server(settings) as server:
        elapsed, received = _dribble(server.url, seconds=HEADER_TIMEOUT * 8)
        print(f"{protocol}: slow client closed after {elapsed:.2f}s (header timeout {HEADER_TIMEOUT}s)")
        assert elapsed < HEADER_TIMEOUT + 1.0, elapsed
        assert b"200 OK" not in received
        # Ordinary clients are unaffected, kept-alive requests after a pause under the timeout too.
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/healthz").status_code == 200
            time.sleep(HEADER_TIMEOUT / 2)
            assert client.get("/healthz").status_code == 200
            time.sleep(HEADER_TIMEOUT * 1.5)  # the deadline of an idle kept-alive connection passed
            assert client.get("/healthz").status_code == 200  # httpx reconnects


def test_server_config_carries_the_limits(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, header_timeout=3, keep_alive_timeout=2, max_header_bytes=8192)
    config = uvicorn_config(settings, "ota.server.app:create_app_from_env", factory=True)
    assert config.timeout_keep_alive == 2
    assert config.h11_max_incomplete_event_size == 8192
    assert config.edgefleet_header_timeout == 3  # type: ignore[attr-defined]
    assert "HeaderDeadline" in str(config.http)
