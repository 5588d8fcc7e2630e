"""Issue 9, item 3: no request reaches the client as a text/plain 500, on SQLite and PostgreSQL alike.

Non-ASCII bytes in an Authorization header or a challenge nonce are a 401; NUL characters in any text field
(JSON bodies at any depth, path, query) are a 422 on both backends (PostgreSQL cannot store them, SQLite
can); anything unexpected is the JSON error body with 500 and no internals; engines hide SQL parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ota.core.manifest import ReportStatus, TokenRequest
from ota.core.signing import sign_document
from ota.server.context import ServerContext
from ota.server.testing import SimDevice

from .conftest import in_process_app


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with in_process_app(request, tmp_path, database=request.param, device_id="dev-1") as served:
        yield {
            "client": served.client,
            "ctx": served.ctx,
            "admin": {"Authorization": f"Bearer {served.admin_token}"},
            "device": served.device,
        }


def _json_error(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    body: dict[str, Any] = answer.json()
    assert set(body) >= {"error", "message"}
    return body


NON_ASCII_AUTH = [
    pytest.param(b"Bearer \xff\xfe\xfd", id="invalid-utf8"),
    pytest.param("Bearer caf\u00e9".encode("latin-1"), id="latin-1"),
    pytest.param("Bearer dev-1.9999999999.\u00e9\u00e9\u00e9".encode("latin-1"), id="device-token-shape"),
    pytest.param("Bearer efo_abc_\u00e9t\u00e9".encode(), id="operator-token-utf8"),
    pytest.param(b"Bearer " + b"\xe9" * 5000, id="very-long"),
]
ENDPOINTS = [
    ("GET", "/v1/devices/dev-1/assignment"),
    ("POST", "/v1/devices/dev-1/reports"),
    ("GET", "/v1/releases"),
    ("GET", "/v1/devices"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize("authorization", NON_ASCII_AUTH)
def test_non_ascii_authorization_is_401(backend: dict[str, Any], authorization: bytes) -> None:
    client: TestClient = backend["client"]
    for method, path in ENDPOINTS:
        answer = client.request(method, path, headers={"Authorization": authorization}, json={})
        assert answer.status_code in {401, 422}, (path, answer.status_code, answer.text[:200])
        _json_error(answer, answer.status_code)
        if method == "GET":
            assert answer.status_code == 401, path


def test_non_ascii_nonce_is_401(backend: dict[str, Any]) -> None:
    client: TestClient = backend["client"]
    device: SimDevice = backend["device"]
    for nonce in ["9999999999.r\u00e9.m\u00e9", "\u0663\u0663.rand.mac", "9999999999.x.\u4e2d\u6587"]:
        signed = sign_document(TokenRequest(device_id="dev-1", nonce=nonce).to_dict(), [device.signer])
        _json_error(client.post("/v1/devices/dev-1/token", json=signed), 401)


def test_nul_in_text_fields_is_422_on_every_backend(backend: dict[str, Any]) -> None:
    client: TestClient = backend["client"]
    admin = backend["admin"]
    device: SimDevice = backend["device"]
    cases = [
        client.post("/v1/tokens", json={"name": "a\x00b", "scopes": ["read"]}, headers=admin),
        client.post("/v1/provisioning-tokens", json={"name": "\x00"}, headers=admin),
        client.post("/v1/rollouts", json={"release_id": "rel\x00x"}, headers=admin),
        client.get("/v1/releases/rel%00x", headers=admin),
        client.get("/v1/rollouts/r%00", headers=admin),
        client.put(
            "/v1/releases",
            params={
                "model": "m",
                "version": "1",
                "profile": "p",
                "source_uri": "s3://x\x00y",
                "artifact_format": "raw",
            },
            content=b"x",
            headers=admin,
        ),
        client.post("/v1/enrol", json=SimDevice("dev-2", tags=("t\x00",)).enrolment("efp_x_y")),
        client.post("/v1/enrol", json={"signed": {"k\x00": 1}, "signatures": []}),
        client.post(
            "/v1/devices/dev-1/reports",
            json=device.report_envelope(ReportStatus.FAILED, details={"error": "bad\x00bytes"}),
            headers=device.headers(),
        ),
    ]
    for answer in cases:
        assert _json_error(answer, 422)["error"] == "invalid_request", answer.text
    # Nothing was stored and the database still answers.
    assert client.get("/v1/releases", headers=admin).json() == []


def test_unexpected_errors_are_json_500_without_internals(
    backend: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client: TestClient = backend["client"]
    ctx: ServerContext = backend["ctx"]

    def broken(_key: str) -> int:
        raise RuntimeError("internal detail /srv/secret/path token_hash=abc")

    monkeypatch.setattr(ctx.blobs, "size", broken)
    body = _json_error(client.get(f"/tuf/targets/{'0' * 64}.m.onnx"), 500)
    assert body == {"error": "internal", "message": "internal error"}


def test_unreadable_blob_is_a_json_error(backend: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    client: TestClient = backend["client"]
    ctx: ServerContext = backend["ctx"]
    key = f"targets/{'1' * 64}.m.onnx"
    ctx.blobs.put_bytes(key, b"model")  # type: ignore[attr-defined]
    original = Path.open

    def unreadable(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == key.split("/")[1]:
            raise PermissionError(13, "Permission denied")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", unreadable)
    body = _json_error(client.get(f"/tuf/{key}"), 503)
    assert body["error"] == "blob_store_unavailable"


def test_engines_hide_sql_parameters(backend: dict[str, Any]) -> None:
    assert backend["ctx"].engine.hide_parameters is True
