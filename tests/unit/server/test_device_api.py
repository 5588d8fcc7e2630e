"""Device admission (pending → accepted / rejected), bad input answers, and target Range requests."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from ota.server.context import ServerContext
from ota.server.testing import SimDevice

from .conftest import make_provisioning


def test_pending_device_waits_for_an_operator(client: TestClient, ctx: ServerContext, admin: dict) -> None:
    token = make_provisioning(ctx, auto_accept=False)
    device = SimDevice("cam-7")
    answer = device.enrol(client, token)
    assert answer.status_code == 202 and answer.json()["state"] == "pending"
    challenge = client.post("/v1/devices/cam-7/challenge").json()
    from ota.core.manifest import TokenRequest
    from ota.core.signing import sign_document

    request = sign_document(TokenRequest("cam-7", challenge["nonce"]).to_dict(), [device.signer])
    refused = client.post("/v1/devices/cam-7/token", json=request)
    assert refused.status_code == 403
    pending = client.get("/v1/devices", params={"state": "pending"}, headers=admin).json()
    assert [d["id"] for d in pending] == ["cam-7"]
    assert client.post("/v1/devices/cam-7/admission/accepted", headers=admin).status_code == 200
    assert device.enrol(client, token).json()["state"] == "accepted"  # re-enrolment is idempotent
    device.login(client)
    assert device.poll(client).status_code == 200
    # Rejection takes effect on the next poll, even though the answer was cached.
    assert client.post("/v1/devices/cam-7/admission/rejected", headers=admin).status_code == 200
    assert device.poll(client).status_code == 403
    assert device.enrol(client, token).status_code == 403
    audit = client.get("/v1/audit", headers=admin).json()
    assert {"device.accepted", "device.rejected", "device.enrol"} <= {e["action"] for e in audit}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"signed": "x", "signatures": []}, 422),
        ({"signed": {}, "signatures": "x"}, 422),
        ({"signed": {}, "signatures": []}, 422),
        ({"signed": {"_type": "enrolment-request"}, "signatures": [], "more": 1}, 422),
    ],
)
def test_bad_enrolment_bodies_are_4xx(client: TestClient, body: dict, status: int) -> None:
    answer = client.post("/v1/enrol", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] and answer.json()["message"]


def test_huge_body_is_refused(client: TestClient) -> None:
    answer = client.post(
        "/v1/enrol", content=b"{" + b" " * 200_000 + b"}", headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413


def test_unknown_ids_are_404(client: TestClient, admin: dict) -> None:
    assert client.get("/v1/releases/nope", headers=admin).status_code == 404
    assert client.get("/v1/rollouts/nope", headers=admin).status_code == 404
    assert client.post("/v1/devices/nobody/challenge").status_code == 404
    answer = client.post("/v1/rollouts", json={"release_id": "nope"}, headers=admin)
    assert answer.status_code == 404 and "nope" in answer.json()["message"]


def test_target_range_requests(client: TestClient, admin: dict) -> None:
    data = bytes(range(256)) * 40
    published = client.put(
        "/v1/releases",
        params={"model": "m", "version": "1", "profile": "p", "artifact_format": "raw"},
        content=data,
        headers=admin,
    ).json()["release"]
    url = f"/tuf/targets/{published['sha256']}.{published['target_name']}"
    assert client.get(url).content == data
    assert hashlib.sha256(client.get(url).content).hexdigest() == published["sha256"]
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert client.get(url, headers={"Range": "bytes=5000-"}).content == data[5000:]
    assert client.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
