"""Regression test: many more concurrent device requests than database connections must not stall the server.

With 200 simulated agents the server once stalled: a route's session (from a generator dependency) kept its
connection "idle in transaction" until FastAPI had validated the response on another worker thread, while
every worker thread waited for a connection. Here the pool is two connections and 48 devices log in and poll
at once against a real uvicorn server on PostgreSQL; every request must succeed within a bound.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from ota.server.testing import SimDevice

from .conftest import live_server, settings_for

DEVICES = 48


def _login_and_poll(url: str, device: SimDevice) -> tuple[int, int]:
    """Log in (challenge + token, both asserted 200), poll the assignment and ask /readyz (each a session)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        device.login(client)
        poll = device.poll(client)
        ready = client.get("/readyz")
        return poll.status_code, ready.status_code


def test_requests_beyond_pool_size_complete(tmp_path: Path, pg_url: str) -> None:
    settings = settings_for(
        tmp_path, database_url=pg_url, db_pool_size=2, db_max_overflow=0, db_pool_timeout=5.0
    )
    with live_server(settings) as server, server.client() as client:
        devices = [SimDevice(f"pool-dev-{i:03d}") for i in range(DEVICES)]
        for device in devices:
            assert device.enrol(client, server.provisioning_token).status_code == 201
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=DEVICES) as pool:
            results = list(pool.map(lambda d: _login_and_poll(server.url, d), devices))
        elapsed = time.monotonic() - started
        # Each device sends 4 requests that use the database: 192 requests through 2 connections.
        assert results == [(200, 200)] * DEVICES
        # A stall shows up as pool timeouts (5 s each, answered 500) or a hang; healthy is well under this.
        assert elapsed < 20, f"{DEVICES} devices took {elapsed:.1f}s"
        # No connection is left checked out once the requests are done.
        assert server.ctx.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
