"""Test, benchmark and demo helpers: one live-server harness and a device that plays the server's HTTP API.

Not used by the server itself. The harness (:func:`free_port`, :func:`serve_in_thread` in this process,
:func:`serve_process` as ``edgefleet server run`` in a child process) is the one the tests, the benches and
the ``make run`` demo start servers with. Tests (unit, through ``TestClient``; integration, through a real
socket) and ``bench/poll_bench.py`` share the small device (:class:`SimDevice`) so that the wire format is
exercised the same way the edge agent does, through ``ota.core.manifest``. Any httpx-compatible client works
(``TestClient`` included).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick; another process may take it before use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerStartError(RuntimeError):
    """A server the harness started did not come up (it exited, or did not answer in time)."""


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
            raise ServerStartError("OTA server did not start")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", admin, provisioning)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@dataclass(frozen=True)
class ServerProcess:
    """A server :func:`serve_process` runs: URL, state folder and tokens."""

    url: str
    home: Path
    operator_token: str
    provisioning_token: str


def process_environment(home: Path, port: int) -> dict[str, str]:
    """Settings of a harness server: state under ``home``, fast rollout ticks, no poll jitter."""
    return {
        "EDGEFLEET_HOME": str(home),
        "EDGEFLEET_PORT": str(port),
        "EDGEFLEET_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "EDGEFLEET_POLL_INTERVAL": "1",
        "EDGEFLEET_POLL_JITTER": "0",
        "EDGEFLEET_ROLLOUT_TICK_INTERVAL": "0.5",
        "EDGEFLEET_CACHE_REFRESH_INTERVAL": "0.2",
    }


def create_tokens(home: Path, *, label: str) -> tuple[str, str]:
    """Migrate the server's database under ``home``; create an admin operator and an auto-accept
    provisioning token, both named ``label``.

    Raises:
        ServerError: The database or key folder cannot be prepared.
    """
    from ota.server.auth import create_operator_token, create_provisioning_token
    from ota.server.context import build_context
    from ota.server.db import transaction
    from ota.server.settings import load_settings

    ctx = build_context(load_settings(home=home), migrate=True)
    try:
        with transaction(ctx.sessions) as session:
            _row, operator = create_operator_token(session, name=label, scopes=["admin"])
            _prow, provisioning = create_provisioning_token(session, name=label, auto_accept=True)
    finally:
        ctx.close()
    return operator, provisioning


@contextmanager
def serve_process(home: Path, *, label: str, fresh: bool = True) -> Iterator[ServerProcess]:
    """Start ``edgefleet server run`` in a child process; stop it (its whole process group) on exit.

    Args:
        home: The server's state folder (its log is ``home/server.log``).
        label: Name of the tokens it makes.
        fresh: Delete the folder first. False reopens an earlier server's state (new tokens are added).

    Raises:
        ServerStartError: The server exited or did not answer within 60 s.
    """
    if fresh and home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, **process_environment(home, port)}
    operator, provisioning = create_tokens(home, label=label)
    log_path = home / "server.log"
    executable = Path(sys.executable).with_name("edgefleet")
    command = (
        [str(executable)]
        if executable.exists()
        else [sys.executable, "-c", "from ota.cli import main; main()"]
    )
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, "server", "run", "--port", str(port), "--host", "127.0.0.1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stopping it stops uvicorn's children too
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, process, log_path)
        yield ServerProcess(url=url, home=home, operator_token=operator, provisioning_token=provisioning)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"the OTA server exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/v1/tuf/1.root.json", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise ServerStartError(f"the OTA server did not answer within {timeout_s:.0f} s; see {log}")


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
