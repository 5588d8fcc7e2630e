"""End-to-end flow through the app in process: enrol, token, publish, rollout, poll (200/304), report."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from ota.core.manifest import ReportStatus, verify_assignment
from ota.core.signing import key_from_dict
from ota.server.context import ServerContext
from ota.server.testing import SimDevice


def publish(client: TestClient, headers: dict[str, str], data: bytes, version: str) -> dict:
    answer = client.put(
        "/v1/releases",
        params={"model": "digits", "version": version, "profile": "cpu-generic", "artifact_format": "raw"},
        content=data,
        headers=headers | {"Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def test_enrol_poll_report(client: TestClient, ctx: ServerContext, admin: dict, provisioning: str) -> None:
    device = SimDevice("dev-1")
    enrolled = device.enrol(client, provisioning)
    assert enrolled.status_code == 201, enrolled.text
    body = enrolled.json()
    assert body["state"] == "accepted"
    assert body["tuf_root"]["signed"]["_type"] == "root"
    director = key_from_dict(body["director_key"])
    device.login(client)

    first = publish(client, admin, b"model-one" * 100, "1")
    again = publish(client, admin, b"model-one" * 100, "1")
    assert again["created"] is False and again["release"]["id"] == first["release"]["id"]

    rollout = client.post(
        "/v1/rollouts",
        json={"release_id": first["release"]["id"], "phases": [{"percent": 100}]},
        headers=admin,
    )
    assert rollout.status_code == 201, rollout.text

    polled = device.poll(client)
    assert polled.status_code == 200, polled.text
    assignment = verify_assignment(
        polled.content, director, device_id="dev-1", hardware_profile="cpu-generic"
    )
    assert assignment.target is not None and assignment.target.sha256 == first["release"]["sha256"]
    etag = polled.headers["etag"]
    assert device.poll(client, etag=etag).status_code == 304
    assert ctx.metrics.polls_304 == 1

    reported = device.report(
        client,
        ReportStatus.COMMITTED,
        rollout_id=assignment.rollout_id,
        release_id=assignment.release_id,
        target_sha256=assignment.target.sha256,
    )
    assert reported.status_code == 200, reported.text
    replay = client.post(
        "/v1/devices/dev-1/reports",
        json=device.report_envelope(ReportStatus.COMMITTED, counter=1),
        headers=device.headers(),
    )
    assert replay.status_code == 403
    assert replay.json()["error"] == "replayed_report"
    status = client.get(f"/v1/rollouts/{rollout.json()['id']}", headers=admin).json()
    assert status["succeeded"] == 1

    # A new release (and rollout) changes the answer: the old ETag no longer matches.
    second = publish(client, admin, b"model-two" * 100, "2")
    assert client.post(f"/v1/rollouts/{rollout.json()['id']}/abort", headers=admin).status_code == 200
    started = client.post(
        "/v1/rollouts",
        json={"release_id": second["release"]["id"], "phases": [{"percent": 100}]},
        headers=admin,
    )
    assert started.status_code == 201, started.text
    changed = device.poll(client, etag=etag)
    assert changed.status_code == 200
    newer = verify_assignment(changed.content, director, device_id="dev-1", last_counter=assignment.counter)
    assert newer.target is not None and newer.target.sha256 == second["release"]["sha256"]
    metrics = client.get("/metrics", headers=admin).text
    assert 'edgefleet_polls_total{code="304"} 1.0' in metrics
    assert 'edgefleet_reports_total{status="committed"} 1.0' in metrics


def test_cached_polls_run_no_sql_and_sign_nothing(
    client: TestClient, ctx: ServerContext, admin: dict, provisioning: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = SimDevice("dev-hot")
    assert device.enrol(client, provisioning).status_code == 201
    device.login(client)
    release = publish(client, admin, b"hot-path" * 50, "1")["release"]
    client.post(
        "/v1/rollouts", json={"release_id": release["id"], "phases": [{"percent": 100}]}, headers=admin
    )
    first = device.poll(client)
    assert first.status_code == 200
    statements: list[str] = []
    event.listen(ctx.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    signatures: list[bytes] = []
    signer = ctx.keyring.signer("director")
    original = type(signer).sign
    monkeypatch.setattr(
        type(signer), "sign", lambda self, payload: signatures.append(payload) or original(self, payload)
    )
    for _ in range(20):
        assert device.poll(client, etag=first.headers["etag"]).status_code == 304
        assert device.poll(client).content == first.content
    assert statements == []
    assert signatures == []
    assert ctx.metrics.polls_cached == 40
