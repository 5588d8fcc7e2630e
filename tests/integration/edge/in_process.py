"""The real OTA server app in this process, without sockets: the in-memory tier of the agent's tests.

:func:`serve_ota_in_process` builds the same server as :func:`tests.integration.edge.conftest.serve_ota`
(SQLite, local blobs, the same settings) and serves its FastAPI app through Starlette's ``TestClient``
transport, an httpx transport that calls the ASGI app directly (lifespan and background tasks included,
in the TestClient's event-loop thread). The :class:`LiveServer` it yields carries that transport: tests hand
it to the agent's httpx client (directly or under a man-in-the-middle transport), so the agent runs its
real verification and install paths against the real server with no port and no socket.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from .conftest import LiveServer, server_settings

BASE_URL = "http://ota.in-process"


@dataclass
class SharedTransport(httpx.BaseTransport):
    """Lends a transport to many clients: closing one client must not close the server's transport."""

    inner: httpx.BaseTransport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)

    def close(self) -> None:
        return None


@contextmanager
def serve_ota_in_process(home: Path, *, label: str = "edge-unit") -> Iterator[LiveServer]:
    """Run the real OTA server app in-process (no socket) until exit; see the module docstring."""
    from fastapi.testclient import TestClient

    from ota.server.app import create_app
    from ota.server.auth import create_operator_token, create_provisioning_token
    from ota.server.context import build_context
    from ota.server.db import transaction

    ctx = build_context(server_settings(home, port=80, public_base_url=BASE_URL))
    with transaction(ctx.sessions) as session:
        _admin_row, admin = create_operator_token(session, name=f"{label}-admin", scopes=["admin"])
        _prov_row, provisioning = create_provisioning_token(session, name=label, auto_accept=True)
    # raise_server_exceptions=False: a server bug answers 500, as uvicorn would, instead of raising into the
    # agent's call stack.
    with TestClient(create_app(ctx=ctx), base_url=BASE_URL, raise_server_exceptions=False) as app_client:
        # TestClient is an httpx.Client; its transport is what serves the app (private attribute, Starlette
        # has no public accessor: https://github.com/encode/starlette/discussions/2390).
        transport = SharedTransport(app_client._transport)
        yield LiveServer(BASE_URL, home, admin, provisioning, ctx, transport=transport)
