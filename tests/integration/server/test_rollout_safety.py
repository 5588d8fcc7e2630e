"""Rollout safety against the real server over HTTP, on SQLite and PostgreSQL (issue 9, defects 1, 3, 5).

* A rollout started with percentages only (or no phases at all) stages: many ticks with no report leave it
  in its first phase that holds a device; it advances only as devices of the cohort commit.
* A completed rollout still reacts to failures: it is rolled back and devices are sent the previous release.
* Reports from devices outside the cohort, about another release, or from a rejected device do not count
  (a rejected device is refused with 403 at once).

The background ticker is off (``rollout_tick_interval`` 3600 s); the test calls the same ``tick_rollout``
the ticker runs, so each tick is a step it controls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ota.core.manifest import ReportStatus, verify_assignment
from ota.server.db import transaction
from ota.server.rollout_machine import in_cohort
from ota.server.rollouts import tick_rollout
from ota.server.testing import SimDevice

from .conftest import LiveServer, live_server, settings_for

FLEET = 30


@contextmanager
def server_on(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    overrides: dict[str, Any] = {}
    if database == "postgresql":
        overrides["database_url"] = request.getfixturevalue("pg_url")
    with live_server(settings_for(tmp_path, **overrides)) as server:
        yield server


def enrol_fleet(server: LiveServer, http: httpx.Client, count: int) -> list[SimDevice]:
    devices = [SimDevice(f"safe-{i:03d}") for i in range(count)]
    for device in devices:
        assert device.enrol(http, server.provisioning_token).status_code == 201
        device.login(http)
    return devices


def publish(server: LiveServer, http: httpx.Client, version: str) -> dict[str, Any]:
    answer = http.put(
        "/v1/releases",
        params={"model": "safe", "version": version, "profile": "cpu-generic", "artifact_format": "raw"},
        content=f"model {version} ".encode() * 200,
        headers=server.admin | {"Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json()["release"])


def start(server: LiveServer, http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    answer = http.post("/v1/rollouts", json=body, headers=server.admin)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def tick(server: LiveServer, rollout_id: str, times: int = 1) -> list[str]:
    events = []
    for _ in range(times):
        with transaction(server.ctx.sessions) as session:
            event = tick_rollout(session, rollout_id)
        if event is not None:
            events.append(event.value)
    return events


def status(server: LiveServer, http: httpx.Client, rollout_id: str) -> dict[str, Any]:
    return dict(http.get(f"/v1/rollouts/{rollout_id}", headers=server.admin).json())


def commit(http: httpx.Client, device: SimDevice, rollout: dict[str, Any], status_: ReportStatus) -> int:
    answer = device.report(
        http, status_, rollout_id=rollout["id"], release_id=rollout["release_id"], target_sha256="a" * 64
    )
    return int(answer.status_code)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
@pytest.mark.parametrize("phases", ["percentages-only", "server-default"])
def test_a_rollout_stages_on_successes_and_rolls_back_after_completion(
    database: str, phases: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with server_on(database, tmp_path, request) as server, server.client() as http:
        devices = enrol_fleet(server, http, FLEET)
        v1 = publish(server, http, "1")
        body: dict[str, Any] = {"release_id": v1["id"], "failure_threshold": 0.2}
        if phases == "percentages-only":
            body["phases"] = [{"percent": p} for p in (1, 10, 50, 100)]
        rollout = start(server, http, body)
        percents = [p["percent"] for p in rollout["phases"]]
        assert percents == [1, 10, 50, 100]

        timeline: list[tuple[float, int, int]] = []  # (percent, cohort, successes when it advanced)
        committed: set[str] = set()
        for _round in range(len(percents) + 1):
            # Many ticks and no new report: the rollout must stop at a phase whose cohort holds a device.
            tick(server, rollout["id"], times=20)
            now = status(server, http, rollout["id"])
            if now["state"] == "completed":
                break
            assert now["state"] == "running"
            percent = percents[now["phase_index"]]
            cohort = [d for d in devices if in_cohort(d.device_id, rollout["id"], percent)]
            assert cohort, f"stopped at {percent} % with an empty cohort"
            assert now["succeeded"] < max(1, (len(cohort) + 1) // 2)
            timeline.append((percent, len(cohort), now["succeeded"]))
            # Commit just enough of the cohort for the default rule (half of it, at least one).
            needed = max(1, (len(cohort) + 1) // 2) - now["succeeded"]
            for device in [d for d in cohort if d.device_id not in committed][:needed]:
                assert commit(http, device, rollout, ReportStatus.COMMITTED) == 200
                committed.add(device.device_id)
        final = status(server, http, rollout["id"])
        assert final["state"] == "completed", (final, timeline)
        assert timeline, "the rollout never waited for a report"
        print(f"{database} {phases}: waited at {timeline}, completed with {final['succeeded']} successes")

        # Devices keep installing after completion; late failures over the threshold roll it back.
        late = [d for d in devices if d.device_id not in committed]
        assert len(late) >= 5
        for device in late[:5]:
            assert commit(http, device, rollout, ReportStatus.HEALTH_CHECK_FAILED) == 200
        rate = 5 / (final["succeeded"] + 5)
        events = tick(server, rollout["id"])
        if rate > 0.2:
            assert events == ["rollback"]
            assert status(server, http, rollout["id"])["state"] == "rolled-back"
        else:  # the cohort was large enough to absorb five failures: push it over
            for device in late[5:]:
                commit(http, device, rollout, ReportStatus.HEALTH_CHECK_FAILED)
            assert tick(server, rollout["id"]) == ["rollback"]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_reports_from_outside_the_cohort_or_a_rejected_device_do_not_count(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with server_on(database, tmp_path, request) as server, server.client() as http:
        devices = enrol_fleet(server, http, FLEET)
        v1 = publish(server, http, "1")
        first = start(server, http, {"release_id": v1["id"], "phases": [{"percent": 100}]})
        http.post(f"/v1/rollouts/{first['id']}/advance", headers=server.admin).raise_for_status()
        v2 = publish(server, http, "2")
        rollout = start(
            server,
            http,
            {
                "release_id": v2["id"],
                "phases": [{"percent": 10}, {"percent": 100}],
                "min_reports_for_abort": 2,
            },
        )
        outside = [d for d in devices if not in_cohort(d.device_id, rollout["id"], 10)]
        inside = [d for d in devices if in_cohort(d.device_id, rollout["id"], 10)]
        # A device outside the cohort is assigned v1 under this rollout's id; its failures are not v2's.
        answer = outside[0].poll(http)
        assignment = verify_assignment(
            answer.content,
            server.ctx.keyring.public_keys("director")[0],
            device_id=outside[0].device_id,
            hardware_profile="cpu-generic",
        )
        assert (assignment.rollout_id, assignment.release_id) == (rollout["id"], v1["id"])
        for device in outside[:6]:
            answer = device.report(
                http,
                ReportStatus.HEALTH_CHECK_FAILED,
                rollout_id=rollout["id"],
                release_id=assignment.release_id,
            )
            assert answer.status_code == 200
            # ...nor do forged reports naming v2 from devices the phase never reached.
            assert commit(http, device, rollout, ReportStatus.HEALTH_CHECK_FAILED) == 200
        # Nothing the phase counts happened: no abort (a 10 % cohort that holds no device may advance).
        assert tick(server, rollout["id"]) == ([] if inside else ["advance"])
        assert status(server, http, rollout["id"])["failed"] == 0
        # A rejected device of the cohort is refused at once and moves nothing.
        if inside:
            victim = inside[0]
            http.post(
                f"/v1/devices/{victim.device_id}/admission/rejected", headers=server.admin
            ).raise_for_status()
            assert commit(http, victim, rollout, ReportStatus.HEALTH_CHECK_FAILED) == 403
            assert victim.poll(http).status_code == 403
        now = status(server, http, rollout["id"])
        assert (now["state"], now["failed"]) == ("running", 0)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_revocation_takes_effect_at_once_on_both_databases(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Operator, provisioning and device credentials revoked over the API (issue 9, defect 3)."""
    with server_on(database, tmp_path, request) as server, server.client() as http:
        created = http.post("/v1/tokens", json={"name": "ci", "scopes": ["read"]}, headers=server.admin)
        assert created.status_code == 201, created.text
        reader = {"Authorization": f"Bearer {created.json()['token']}"}
        assert http.get("/v1/releases", headers=reader).status_code == 200
        assert http.post(f"/v1/tokens/{created.json()['id']}/revoke", headers=server.admin).status_code == 200
        assert http.get("/v1/releases", headers=reader).status_code == 401

        device = enrol_fleet(server, http, 1)[0]
        provisioning_id = server.provisioning_token.split("_")[1]
        assert http.post(f"/v1/tokens/{provisioning_id}/revoke", headers=server.admin).status_code == 200
        assert SimDevice("late-device").enrol(http, server.provisioning_token).status_code == 401

        publish(server, http, "1")
        assert device.poll(http).status_code == 200  # accepted (no rollout yet: an empty assignment)
        revoked = http.post(
            f"/v1/devices/{device.device_id}/revoke", json={"reason": "lost"}, headers=server.admin
        )
        assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
        assert device.poll(http).status_code == 403
        assert device.report(http, ReportStatus.COMMITTED).status_code == 403
        audit = {e["action"] for e in http.get("/v1/audit", headers=server.admin).json()}
        assert {"token.revoke", "provisioning.revoke", "device.revoke"} <= audit


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_group_scoped_provisioning_token_binds_the_group_on_both_databases(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Issue 9, defect 5: an auto-accept token scoped to a group let a device enrol into another group."""
    with server_on(database, tmp_path, request) as server, server.client() as http:
        made = http.post(
            "/v1/provisioning-tokens",
            json={"name": "lab", "auto_accept": True, "group": "lab"},
            headers=server.admin,
        )
        assert made.status_code == 201, made.text
        token = made.json()["token"]
        escape = SimDevice("escaper", group="production").enrol(http, token)
        assert escape.status_code == 403 and "group 'lab' only" in escape.json()["message"]
        assert SimDevice("lab-1", group="lab").enrol(http, token).status_code == 201
        assert SimDevice("lab-2").enrol(http, token).status_code == 201
        groups = {d["id"]: d["group"] for d in http.get("/v1/devices", headers=server.admin).json()}
        assert groups == {"lab-1": "lab", "lab-2": "lab"}
