"""Auth test table: every endpoint refuses missing credentials, wrong scopes, another device's identity
and replayed reports with 401/403, and the database is unchanged afterwards."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from ota.core.manifest import ReportStatus
from ota.server.app import create_app
from ota.server.context import ServerContext
from ota.server.models import Base
from ota.server.testing import SimDevice

from .conftest import fresh_context, make_provisioning, make_token


def fingerprint(ctx: ServerContext) -> str:
    digest = hashlib.sha256()
    with ctx.sessions() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)).all():
                digest.update(repr((table.name, tuple(row))).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, template_home: Path
) -> Iterator[tuple[ServerContext, TestClient]]:
    # Refused requests change nothing (each test checks it), so one server serves the whole table.
    context = fresh_context(template_home, tmp_path_factory.mktemp("auth") / "home")
    with TestClient(create_app(ctx=context)) as test_client:
        yield context, test_client
    context.close()


@pytest.fixture
def ctx(shared: tuple[ServerContext, TestClient]) -> ServerContext:
    return shared[0]


@pytest.fixture
def client(shared: tuple[ServerContext, TestClient]) -> TestClient:
    return shared[1]


@pytest.fixture(scope="module")
def world(shared: tuple[ServerContext, TestClient]) -> dict[str, Any]:
    """Two enrolled, logged-in devices, one release and one rollout."""
    ctx, client = shared
    admin = {"Authorization": f"Bearer {make_token(ctx, 'admin')}"}
    provisioning = make_provisioning(ctx)
    devices = {}
    for name in ("alice", "bob"):
        device = SimDevice(name)
        assert device.enrol(client, provisioning).status_code == 201
        device.login(client)
        devices[name] = device
    published = client.put(
        "/v1/releases",
        params={"model": "m", "version": "1", "profile": "cpu-generic", "artifact_format": "raw"},
        content=b"artifact-bytes",
        headers=admin,
    ).json()
    rollout = client.post(
        "/v1/rollouts",
        json={"release_id": published["release"]["id"], "phases": [{"percent": 100}]},
        headers=admin,
    ).json()
    assert (
        devices["alice"].report(client, ReportStatus.DOWNLOADING, rollout_id=rollout["id"]).status_code == 200
    )
    return {"devices": devices, "release": published["release"]["id"], "rollout": rollout["id"]}


# (method, path template, required scope, json body)
OPERATOR_ENDPOINTS = [
    ("POST", "/v1/tokens", "admin", {"name": "x", "scopes": ["read"]}),
    ("POST", "/v1/provisioning-tokens", "admin", {"name": "x"}),
    ("PUT", "/v1/releases?model=m&version=9&profile=cpu-generic", "release", None),
    ("GET", "/v1/releases", "read", None),
    ("GET", "/v1/releases/{release}", "read", None),
    ("POST", "/v1/rollouts", "rollout", {"release_id": "{release}"}),
    ("GET", "/v1/rollouts", "read", None),
    ("GET", "/v1/rollouts/{rollout}", "read", None),
    ("POST", "/v1/rollouts/{rollout}/pause", "rollout", None),
    ("GET", "/v1/devices", "read", None),
    ("POST", "/v1/devices/bob/admission/rejected", "admin", None),
    ("GET", "/v1/audit", "admin", None),
]
WRONG_SCOPE = {"admin": "rollout", "release": "read", "read": "release", "rollout": "release"}


def _fill(value: Any, world: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(release=world["release"], rollout=world["rollout"])
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "scope", "body"), OPERATOR_ENDPOINTS)
@pytest.mark.parametrize("credential", ["none", "garbage", "wrong-scope", "device-token"])
def test_operator_endpoints_refuse(
    client: TestClient,
    ctx: ServerContext,
    world: dict[str, Any],
    method: str,
    path: str,
    scope: str,
    body: Any,
    credential: str,
) -> None:
    headers: dict[str, str] = {}
    if credential == "garbage":
        headers["Authorization"] = "Bearer efo_000000000000_not-a-real-token"
    elif credential == "wrong-scope":
        headers["Authorization"] = f"Bearer {make_token(ctx, WRONG_SCOPE[scope])}"
    elif credential == "device-token":
        headers = world["devices"]["alice"].headers()
    before = fingerprint(ctx)
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = _fill(body, world)
    elif method == "PUT":
        kwargs["content"] = b"other-bytes"
    answer = client.request(method, _fill(path, world), **kwargs)
    expected = 403 if credential == "wrong-scope" else 401
    assert answer.status_code == expected, answer.text
    assert answer.json()["error"] in {"unauthorized", "forbidden"}
    assert fingerprint(ctx) == before


Attack = Callable[[TestClient, dict[str, Any]], Any]


def _poll_without_token(client: TestClient, w: dict[str, Any]) -> Any:
    return client.get("/v1/devices/alice/assignment")


def _poll_as_other_device(client: TestClient, w: dict[str, Any]) -> Any:
    return client.get("/v1/devices/alice/assignment", headers=w["devices"]["bob"].headers())


def _poll_forged_token(client: TestClient, w: dict[str, Any]) -> Any:
    token = w["devices"]["alice"].token
    forged = token.rsplit(".", 1)[0] + ".AAAAAAAAAAAAAAAAAAAAAAAA"
    return client.get("/v1/devices/alice/assignment", headers={"Authorization": f"Bearer {forged}"})


def _poll_operator_token(client: TestClient, w: dict[str, Any]) -> Any:
    return client.get("/v1/devices/alice/assignment", headers={"Authorization": "Bearer efo_x_y"})


def _report_without_token(client: TestClient, w: dict[str, Any]) -> Any:
    alice = w["devices"]["alice"]
    return client.post("/v1/devices/alice/reports", json=alice.report_envelope(ReportStatus.INSTALLED))


def _report_as_other_device(client: TestClient, w: dict[str, Any]) -> Any:
    alice, bob = w["devices"]["alice"], w["devices"]["bob"]
    return client.post(
        "/v1/devices/alice/reports", json=alice.report_envelope(ReportStatus.INSTALLED), headers=bob.headers()
    )


def _report_signed_by_other_key(client: TestClient, w: dict[str, Any]) -> Any:
    alice, bob = w["devices"]["alice"], w["devices"]["bob"]
    envelope = bob.report_envelope(ReportStatus.COMMITTED, device_id="alice", counter=99)
    return client.post("/v1/devices/alice/reports", json=envelope, headers=alice.headers())


def _report_naming_other_device(client: TestClient, w: dict[str, Any]) -> Any:
    bob = w["devices"]["bob"]
    envelope = bob.report_envelope(ReportStatus.COMMITTED, device_id="alice", counter=99)
    return client.post("/v1/devices/bob/reports", json=envelope, headers=bob.headers())


def _replayed_report(client: TestClient, w: dict[str, Any]) -> Any:
    alice = w["devices"]["alice"]
    envelope = alice.report_envelope(ReportStatus.DOWNLOADING, counter=1, rollout_id=w["rollout"])
    return client.post("/v1/devices/alice/reports", json=envelope, headers=alice.headers())


def _token_signed_by_other_key(client: TestClient, w: dict[str, Any]) -> Any:
    from ota.core.manifest import TokenRequest
    from ota.core.signing import sign_document

    nonce = client.post("/v1/devices/alice/challenge").json()["nonce"]
    request = TokenRequest(device_id="alice", nonce=nonce).to_dict()
    return client.post("/v1/devices/alice/token", json=sign_document(request, [w["devices"]["bob"].signer]))


def _token_with_other_devices_nonce(client: TestClient, w: dict[str, Any]) -> Any:
    from ota.core.manifest import TokenRequest
    from ota.core.signing import sign_document

    nonce = client.post("/v1/devices/bob/challenge").json()["nonce"]
    request = TokenRequest(device_id="alice", nonce=nonce).to_dict()
    return client.post("/v1/devices/alice/token", json=sign_document(request, [w["devices"]["alice"].signer]))


def _enrol_with_bad_provisioning(client: TestClient, w: dict[str, Any]) -> Any:
    return SimDevice("mallory").enrol(client, "efp_000_not-a-token")


def _enrol_signed_by_other_key(client: TestClient, w: dict[str, Any]) -> Any:
    from ota.core.signing import sign_document

    mallory = SimDevice("mallory")
    envelope = mallory.enrolment("efp_000_not-a-token")
    return client.post("/v1/enrol", json=sign_document(envelope["signed"], [w["devices"]["bob"].signer]))


DEVICE_ATTACKS: list[tuple[str, Attack, int]] = [
    ("poll without token", _poll_without_token, 401),
    ("poll with another device's token", _poll_as_other_device, 403),
    ("poll with a forged token", _poll_forged_token, 401),
    ("poll with an operator token", _poll_operator_token, 401),
    ("report without token", _report_without_token, 401),
    ("report with another device's token", _report_as_other_device, 403),
    ("report signed by another device's key", _report_signed_by_other_key, 401),
    ("report naming another device", _report_naming_other_device, 403),
    ("replayed report", _replayed_report, 403),
    ("token request signed by another key", _token_signed_by_other_key, 401),
    ("token request with another device's nonce", _token_with_other_devices_nonce, 401),
    ("enrol with an unknown provisioning token", _enrol_with_bad_provisioning, 401),
    ("enrol signed by a key other than the one presented", _enrol_signed_by_other_key, 401),
]


@pytest.mark.parametrize(("name", "attack", "expected"), DEVICE_ATTACKS, ids=[a[0] for a in DEVICE_ATTACKS])
def test_device_endpoints_refuse(
    client: TestClient, ctx: ServerContext, world: dict[str, Any], name: str, attack: Attack, expected: int
) -> None:
    before = fingerprint(ctx)
    answer = attack(client, world)
    assert answer.status_code == expected, f"{name}: {answer.status_code} {answer.text}"
    assert set(answer.json()) >= {"error", "message"}
    assert fingerprint(ctx) == before


def test_enrolling_an_existing_id_with_another_key_is_refused(
    client: TestClient, ctx: ServerContext, world: dict[str, Any]
) -> None:
    provisioning = make_provisioning(ctx)
    before = fingerprint(ctx)
    answer = SimDevice("alice").enrol(client, provisioning)
    assert answer.status_code == 409
    assert fingerprint(ctx) == before
