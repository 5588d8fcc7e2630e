"""Revocation and admission (issue 9, defects 3 and 5): operator, provisioning and device credentials can be
revoked (API, audited), a rejected or revoked device is refused on every endpoint at once, and a
group-scoped provisioning token binds its devices to the group."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from ota.core.manifest import ReportStatus
from ota.server.auth import create_provisioning_token
from ota.server.context import ServerContext
from ota.server.db import transaction
from ota.server.models import AuditEntry
from ota.server.testing import SimDevice
from tests.unit.server.conftest import make_provisioning, make_token


def audit_actions(ctx: ServerContext, subject: str) -> list[str]:
    with ctx.sessions() as session:
        return list(session.scalars(select(AuditEntry.action).where(AuditEntry.subject == subject)))


def publish_and_roll_out(client: TestClient, admin: dict[str, str]) -> dict:
    answer = client.put(
        "/v1/releases",
        params={"model": "net", "version": "1", "profile": "cpu-generic", "artifact_format": "raw"},
        content=b"model-one" * 100,
        headers=admin | {"Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 201, answer.text
    release = answer.json()["release"]
    rollout = client.post(
        "/v1/rollouts",
        json={"release_id": release["id"], "phases": [{"percent": 100}], "min_reports_for_abort": 1},
        headers=admin,
    )
    assert rollout.status_code == 201, rollout.text
    return {"release": release, "rollout": rollout.json()}


def test_a_revoked_operator_token_is_refused_at_once(
    client: TestClient, ctx: ServerContext, admin: dict[str, str]
) -> None:
    reader = make_token(ctx, "read")
    headers = {"Authorization": f"Bearer {reader}"}
    assert client.get("/v1/releases", headers=headers).status_code == 200
    token_id = reader.split("_")[1]
    revoked = client.post(f"/v1/tokens/{token_id}/revoke", json={"reason": "leaked"}, headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    refused = client.get("/v1/releases", headers=headers)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["message"]
    assert audit_actions(ctx, token_id) == ["token.revoke"]
    listed = {t["id"]: t for t in client.get("/v1/tokens", headers=admin).json()}
    assert listed[token_id]["revoked_at"] is not None
    # Revoking again changes nothing and writes no second entry; an unknown id is a 404.
    assert client.post(f"/v1/tokens/{token_id}/revoke", headers=admin).status_code == 200
    assert audit_actions(ctx, token_id) == ["token.revoke"]
    assert client.post("/v1/tokens/000000000000/revoke", headers=admin).status_code == 404


def test_only_admins_revoke(client: TestClient, ctx: ServerContext, admin: dict[str, str]) -> None:
    rollout_token = make_token(ctx, "rollout", "release", "read")
    victim = make_token(ctx, "read").split("_")[1]
    answer = client.post(f"/v1/tokens/{victim}/revoke", headers={"Authorization": f"Bearer {rollout_token}"})
    assert answer.status_code == 403


def test_a_revoked_provisioning_token_enrols_nobody(
    client: TestClient, ctx: ServerContext, admin: dict[str, str]
) -> None:
    token = make_provisioning(ctx)
    assert SimDevice("before").enrol(client, token).status_code == 201
    token_id = token.split("_")[1]
    assert client.post(f"/v1/tokens/{token_id}/revoke", headers=admin).status_code == 200
    refused = SimDevice("after").enrol(client, token)
    assert refused.status_code == 401
    assert audit_actions(ctx, token_id)[-1] == "provisioning.revoke"
    listed = {t["id"]: t for t in client.get("/v1/provisioning-tokens", headers=admin).json()}
    assert listed[token_id]["revoked_at"] is not None


def test_a_rejected_device_is_refused_everywhere_and_moves_no_rollout(
    client: TestClient, ctx: ServerContext, admin: dict[str, str], provisioning: str
) -> None:
    """The audit's case: a rejected device kept posting reports with its unexpired poll token."""
    device = SimDevice("dev-rejected")
    assert device.enrol(client, provisioning).status_code == 201
    device.login(client)
    plan = publish_and_roll_out(client, admin)
    polled = device.poll(client)
    assert polled.status_code == 200  # now cached on the hot path
    rejected = client.post(
        "/v1/devices/dev-rejected/admission/rejected", json={"reason": "stolen"}, headers=admin
    )
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    # Every device endpoint refuses it at once, with the token it still holds.
    assert device.poll(client).status_code == 403
    assert device.poll(client, etag=polled.headers["etag"]).status_code == 403
    report = device.report(
        client,
        ReportStatus.HEALTH_CHECK_FAILED,
        rollout_id=plan["rollout"]["id"],
        release_id=plan["release"]["id"],
    )
    assert report.status_code == 403
    assert client.post("/v1/devices/dev-rejected/challenge").status_code == 403
    assert device.enrol(client, provisioning).status_code == 403
    status = client.get(f"/v1/rollouts/{plan['rollout']['id']}", headers=admin).json()
    assert status["failed"] == 0 and status["state"] == "running"
    # Rejection is an admission decision: it can be taken back.
    assert client.post("/v1/devices/dev-rejected/admission/accepted", headers=admin).status_code == 200
    device.login(client)
    assert device.poll(client).status_code == 200
    assert audit_actions(ctx, "dev-rejected") == ["device.enrol", "device.rejected", "device.accepted"]


def test_a_revoked_device_is_refused_for_good(
    client: TestClient, ctx: ServerContext, admin: dict[str, str], provisioning: str
) -> None:
    device = SimDevice("dev-revoked")
    assert device.enrol(client, provisioning).status_code == 201
    device.login(client)
    publish_and_roll_out(client, admin)
    assert device.poll(client).status_code == 200
    revoked = client.post("/v1/devices/dev-revoked/revoke", json={"reason": "decommissioned"}, headers=admin)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert device.poll(client).status_code == 403
    assert device.report(client, ReportStatus.COMMITTED).status_code == 403
    assert client.post("/v1/devices/dev-revoked/challenge").status_code == 403
    assert device.enrol(client, provisioning).status_code == 403
    again = client.post("/v1/devices/dev-revoked/admission/accepted", headers=admin)
    assert again.status_code == 409
    assert "enrol again" in again.json()["message"]
    assert audit_actions(ctx, "dev-revoked") == ["device.enrol", "device.revoke"]


def test_pending_is_not_a_decision(client: TestClient, admin: dict[str, str], provisioning: str) -> None:
    assert SimDevice("dev-p").enrol(client, provisioning).status_code == 201
    answer = client.post("/v1/devices/dev-p/admission/pending", headers=admin)
    assert answer.status_code == 422


def test_a_group_scoped_token_binds_the_group(client: TestClient, ctx: ServerContext) -> None:
    """The audit's case: an auto-accept token scoped to a group let a device choose another group."""
    with transaction(ctx.sessions) as session:
        _row, token = create_provisioning_token(session, name="lab", auto_accept=True, group="lab")
    refused = SimDevice("dev-escape", group="production").enrol(client, token)
    assert refused.status_code == 403
    assert "group 'lab' only" in refused.json()["message"]
    same = SimDevice("dev-lab", group="lab").enrol(client, token)
    unnamed = SimDevice("dev-unnamed").enrol(client, token)
    assert same.status_code == 201 and unnamed.status_code == 201
