"""Fixtures for the OTA server's integration tests: a real uvicorn server on a free port, PostgreSQL in a
fresh schema per test, and S3 through moto's server mode, all started and stopped by the tests."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ota.server.context import ServerContext, build_context
from ota.server.settings import ServerSettings, load_settings
from ota.server.testing import free_port, serve_in_thread

PG_ADMIN_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class LiveServer:
    url: str
    ctx: ServerContext
    admin_token: str
    provisioning_token: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


@contextmanager
def live_server(settings: ServerSettings) -> Iterator[LiveServer]:
    """Run the app on uvicorn in a thread; stop it (and its background tasks) on exit."""
    ctx = build_context(settings)
    with serve_in_thread(ctx, label="it") as served:
        yield LiveServer(served.url, ctx, served.admin_token, served.provisioning_token)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (dropped afterwards), selected through the connection's search_path."""
    schema = f"ef_it_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required for this test: {exc}")
    url = (
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://") + f"?options=-csearch_path%3D{schema}"
    )
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 in server mode, over real HTTP."""
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def settings_for(tmp_path: Path, **overrides: Any) -> ServerSettings:
    port = free_port()
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "token_secret": "integration-secret",
        "port": port,
        "public_base_url": f"http://127.0.0.1:{port}",
        "poll_jitter": 0,
        "cache_refresh_interval": 0.2,
        "rollout_tick_interval": 3600,
        "resign_check_interval": 3600,
        # Tests run on a fast clock: phases need their successes, not a minute's soak.
        "rollout_min_soak_seconds": 0,
    }
    values.update(overrides)
    return load_settings(**values)


@dataclass
class InProcessApp:
    """The app on one database in process (TestClient), with an admin token and an enrolled device."""

    app: Any
    client: Any
    ctx: ServerContext
    admin_token: str
    device: Any


@contextmanager
def in_process_app(
    request: pytest.FixtureRequest, tmp_path: Path, *, database: str, device_id: str
) -> Iterator[InProcessApp]:
    """Build the app on SQLite or PostgreSQL (a fresh schema), with 500s seen as answers, not test errors."""
    from fastapi.testclient import TestClient

    from ota.server.app import create_app
    from ota.server.auth import create_operator_token, create_provisioning_token
    from ota.server.db import transaction
    from ota.server.testing import SimDevice

    database_url = request.getfixturevalue("pg_url") if database == "postgresql" else ""
    ctx = build_context(
        load_settings(
            home=tmp_path / "home",
            database_url=database_url,
            token_secret=secrets.token_urlsafe(48),
            cache_refresh_interval=3600,
            resign_check_interval=3600,
            rollout_tick_interval=3600,
        )
    )
    with transaction(ctx.sessions) as session:
        _row, admin = create_operator_token(session, name="admin", scopes=["admin"])
        _prow, provisioning = create_provisioning_token(session, name="p", auto_accept=True)
    app = create_app(ctx=ctx)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            device = SimDevice(device_id)
            assert device.enrol(client, provisioning).status_code == 201
            device.login(client)
            yield InProcessApp(app, client, ctx, admin, device)
    finally:
        ctx.close()
