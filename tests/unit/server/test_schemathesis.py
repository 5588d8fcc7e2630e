"""Schemathesis against the OpenAPI schema, in process: bad input to every endpoint never gives a 5xx.

Requests carry an admin token and a device token (for device "fuzz-device"), so generated cases get past
authentication and exercise validation and the handlers themselves. The Authorization header is fuzzed
too (issue 9): hypothesis draws raw bytes after ``Bearer `` (non-ASCII and latin-1 included) for some
cases, and every operation also gets explicit rows (non-ASCII, latin-1, invalid UTF-8, NUL, very long).
Bounded: a few examples per operation. ``tests/integration/server/test_schemathesis_headers.py`` runs the
same on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from ota.server.app import create_app
from ota.server.context import build_context
from ota.server.settings import load_settings
from ota.server.testing import SimDevice

from .conftest import make_provisioning, make_token

MAX_EXAMPLES = 12


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home: Path = tmp_path_factory.mktemp("fuzz")
    ctx = build_context(
        load_settings(
            home=home,
            token_secret="fuzz-secret-" + "k7Qz9vRtLm2XcW4pYs8NbH3jFd6GaE1u",
            cache_refresh_interval=3600,
            resign_check_interval=3600,
            rollout_tick_interval=3600,
        )
    )
    app = create_app(ctx=ctx)
    with TestClient(app, raise_server_exceptions=False) as client:
        device = SimDevice("fuzz-device")
        assert device.enrol(client, make_provisioning(ctx)).status_code == 201
        device.login(client)
        admin = make_token(ctx, "admin")
        yield {"app": app, "admin": admin, "device_token": device.token}
    ctx.close()


def _operations(fuzz_target: dict[str, Any]) -> list[Any]:
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzz_target["app"])
    return [result.ok() for result in api.get_all_operations()]


# Header values an HTTP client can put on the wire: any byte but CR, LF and NUL (h11 refuses those
# client-side, and no server ever sees them), so latin-1 and invalid UTF-8 are in.
HEADER_BYTES = st.binary(max_size=300).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00"))
AUTHORIZATION_ROWS: list[bytes] = [
    "Bearer caf\u00e9".encode("latin-1"),
    "Bearer \u00e9t\u00e9".encode(),
    b"Bearer \xff\xfe\xfd\x80",
    "Bearer fuzz-device.9999999999.\u00e9\u00e9".encode("latin-1"),
    "Bearer efo_\u00e9_\u00e9".encode(),
    b"Bearer a\x00b",
    b"Bearer " + b"\xe9" * 8000,
    b"Bearer " + b"A" * 8000,
    b"\xe9\xe9 token",
    b"",
]


def _check(operation: Any, case: Any, headers: dict[str, Any]) -> None:
    # Headers travel as latin-1 octets: a str of latin-1 characters reaches the app as exactly these bytes.
    headers = {k: v.decode("latin-1") if isinstance(v, bytes) else v for k, v in headers.items()}
    try:
        response = case.call(headers=headers)
    except Exception as exc:  # the client refuses to send it (NUL): nothing reached the server
        if "header" in str(exc).lower() or isinstance(exc, ValueError | UnicodeError):
            return
        raise
    assert response.status_code < 500, (operation.label, headers, response.status_code, response.text[:300])
    case.validate_response(response, checks=[not_a_server_error])


def fuzz_operation(operation: Any, token: str, device_scoped: bool, device_id: str = "fuzz-device") -> None:
    """Fuzz one operation: generated cases (with fuzzed Authorization bytes for some), then the rows."""

    @given(case=operation.as_strategy(), auth=st.one_of(st.none(), HEADER_BYTES))
    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def run(case: Any, auth: bytes | None) -> None:
        if device_scoped and case.path_parameters and hash(str(case.path_parameters)) % 2 == 0:
            # Half the cases act as the device the token belongs to, so handlers run past auth.
            case.path_parameters["device_id"] = device_id
        value: Any = f"Bearer {token}" if auth is None else b"Bearer " + auth
        _check(operation, case, {"Authorization": value})

    run()

    @given(case=operation.as_strategy())
    @settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def rows(case: Any) -> None:
        if device_scoped and case.path_parameters:
            case.path_parameters["device_id"] = device_id
        for value in AUTHORIZATION_ROWS:
            _check(operation, case, {"Authorization": value})

    rows()


def test_no_server_errors(fuzz_target: dict[str, Any]) -> None:
    # schemathesis' lazy pytest loader breaks on this pytest version ('Function' has no '_nodeid'), so
    # each operation's strategy is driven through hypothesis directly, with the same bounded settings.
    operations = _operations(fuzz_target)
    assert len(operations) >= 15
    for operation in operations:
        device_scoped = operation.path.startswith("/v1/devices/{device_id}")
        token = fuzz_target["device_token"] if device_scoped else fuzz_target["admin"]
        fuzz_operation(operation, token, device_scoped)
