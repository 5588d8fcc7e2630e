"""Test and benchmark helpers that play a device against the server's HTTP API.

Not used by the server itself. Tests (unit, through ``TestClient``; integration, through a real socket)
and ``bench/poll_bench.py`` share this small device so that the wire format is exercised the same way the
edge agent does, through ``ota.core.manifest``. Any httpx-compatible client works (``TestClient`` included).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from securesystemslib.signer import CryptoSigner

from ota.core.manifest import (
    EnrolmentRequest,
    ReportStatus,
    StatusReport,
    TokenRequest,
    format_time,
    sign_status_report,
    utc_now,
)
from ota.core.signing import generate_ed25519_signer, key_to_dict, sign_document

if TYPE_CHECKING:
    from ota.server.context import ServerContext


class Served(NamedTuple):
    """A server :func:`serve_in_thread` runs: its URL and the tokens it made."""

    url: str
    admin_token: str
    provisioning_token: str


@contextmanager
def serve_in_thread(
    ctx: ServerContext, *, label: str, wrap: Callable[[Any], Any] | None = None
) -> Iterator[Served]:
    """Serve ``ctx``'s app with uvicorn in a thread on ``ctx.settings.port``; stop it (and its background
    tasks) on exit. An admin operator token and an auto-accepting provisioning token, both named after
    ``label``, are made first. ``wrap`` wraps the ASGI app (a benchmark counts requests with it).

    Raises:
        RuntimeError: The server did not start within 20 s.
    """
    import uvicorn

    from ota.server.app import create_app
    from ota.server.auth import create_operator_token, create_provisioning_token
    from ota.server.db import transaction
    from ota.server.serving import uvicorn_config

    with transaction(ctx.sessions) as session:
        _admin_row, admin = create_operator_token(session, name=f"{label}-admin", scopes=["admin"])
        _prov_row, provisioning = create_provisioning_token(session, name=label, auto_accept=True)
    port = ctx.settings.port
    server = uvicorn.Server(
        uvicorn_config(
            ctx.settings,
            (wrap or (lambda app: app))(create_app(ctx=ctx)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("OTA server did not start")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", admin, provisioning)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


class HttpClient(Protocol):
    """The part of httpx.Client (and Starlette's TestClient) the helpers use."""

    def get(self, url: str, **kwargs: Any) -> Any:
        """Send a GET."""

    def post(self, url: str, **kwargs: Any) -> Any:
        """Send a POST."""


@dataclass
class SimDevice:
    """A device identity with its own Ed25519 key and report counter."""

    device_id: str
    profile: str = "cpu-generic"
    tags: tuple[str, ...] = ()
    group: str | None = None
    signer: CryptoSigner = field(default_factory=generate_ed25519_signer)
    counter: int = 0
    token: str | None = None

    def enrolment(self, provisioning_token: str) -> dict[str, Any]:
        """Return the signed enrolment envelope."""
        request = EnrolmentRequest(
            device_id=self.device_id,
            provisioning_token=provisioning_token,
            public_key=key_to_dict(self.signer.public_key),
            hardware_profile=self.profile,
            hardware={"arch": "x86_64"},
            tags=self.tags,
            group=self.group,
        )
        return sign_document(request.to_dict(), [self.signer])

    def enrol(self, client: HttpClient, provisioning_token: str) -> Any:
        """POST the enrolment and return the response."""
        return client.post("/v1/enrol", json=self.enrolment(provisioning_token))

    def login(self, client: HttpClient) -> str:
        """Run challenge → signed token request → token; remember and return the token.

        Raises:
            AssertionError: The server refused.
        """
        challenge = client.post(f"/v1/devices/{self.device_id}/challenge")
        assert challenge.status_code == 200, challenge.text
        request = TokenRequest(device_id=self.device_id, nonce=challenge.json()["nonce"])
        answer = client.post(
            f"/v1/devices/{self.device_id}/token", json=sign_document(request.to_dict(), [self.signer])
        )
        assert answer.status_code == 200, answer.text
        self.token = str(answer.json()["token"])
        return self.token

    def headers(self, etag: str | None = None) -> dict[str, str]:
        """Return the auth (and If-None-Match) headers of a poll."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if etag:
            headers["If-None-Match"] = etag
        return headers

    def poll(self, client: HttpClient, *, current: str | None = None, etag: str | None = None) -> Any:
        """GET the assignment."""
        params = {"current": current} if current else None
        return client.get(
            f"/v1/devices/{self.device_id}/assignment", params=params, headers=self.headers(etag)
        )

    def report_envelope(
        self, status: ReportStatus, *, counter: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Return a signed status report (the counter advances unless given)."""
        if counter is None:
            self.counter += 1
            counter = self.counter
        report = StatusReport(
            device_id=fields.pop("device_id", self.device_id),
            counter=counter,
            status=status,
            timestamp=format_time(utc_now()),
            **fields,
        )
        return sign_status_report(report, self.signer)

    def report(self, client: HttpClient, status: ReportStatus, **fields: Any) -> Any:
        """POST a signed status report."""
        return client.post(
            f"/v1/devices/{self.device_id}/reports",
            json=self.report_envelope(status, **fields),
            headers=self.headers(),
        )


def write_selftest_vectors(path: Path, payload: bytes) -> Path:
    """Write valid self-test vectors (the server checks their schema) whose inputs are ``payload``'s bytes.

    Distinct payloads give distinct files, for tests of content addressing and conflicts.
    """
    import numpy as np

    from ota.core.selftest import save_vectors

    save_vectors(
        path,
        inputs=np.frombuffer(payload, dtype=np.uint8).astype(np.float32)[None, :],
        expected_top1=np.zeros(1, dtype=np.int64),
        expected_logits=np.zeros((1, 2), dtype=np.float32),
        tolerance=0.05,
    )
    return path
