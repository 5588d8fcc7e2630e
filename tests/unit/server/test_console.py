"""The web console without a browser (issue 12): sign-in, cookie flags, CSP, CSRF, scopes, rollout actions
through the same service functions as the API, and the devices page's filters and paging. In process
(TestClient) on SQLite; the browser scenario is tests/integration/server/test_console_browser.py."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from ota.server.app import create_app
from ota.server.console.queries import DeviceFilter, device_page, distinct_values, filter_choices, trace_of
from ota.server.context import ServerContext
from ota.server.db import transaction
from ota.server.models import AuditEntry, ConsoleSession, Device, Release, Rollout
from ota.server.testing import SimDevice

from .conftest import make_token

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def sign_in(client: TestClient, token: str) -> str:
    """Sign in through the form; return the session's CSRF token (from the next page)."""
    form = client.get("/console/login")
    assert form.status_code == 200
    answer = client.post(
        "/console/login", data={"csrf": csrf_of(form.text), "token": token}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200
    return csrf_of(page.text)


def publish(client: TestClient, admin: dict[str, str], version: str = "1") -> dict[str, Any]:
    answer = client.put(
        "/v1/releases",
        params={"model": "digits", "version": version, "profile": "cpu-generic", "artifact_format": "raw"},
        content=f"model {version} ".encode() * 100,
        headers=admin | {"Content-Type": "application/octet-stream"},
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json()["release"])


def start_rollout(client: TestClient, admin: dict[str, str], release_id: str) -> str:
    answer = client.post("/v1/rollouts", json={"release_id": release_id}, headers=admin)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def state_of(ctx: ServerContext, rollout_id: str) -> str:
    with ctx.sessions() as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        return rollout.state


def cookie_header(answer: Any, name: str) -> str:
    for value in answer.headers.get_list("set-cookie"):
        if value.startswith(f"{name}="):
            return str(value)
    raise AssertionError(f"no {name} cookie set: {answer.headers.get_list('set-cookie')}")


def test_pages_send_a_strict_csp_and_the_session_cookie_is_httponly_strict(
    client: TestClient, ctx: ServerContext
) -> None:
    form = client.get("/console/login")
    csp = form.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in form.text and " style=" not in form.text  # nothing inline for the CSP to block
    login_cookie = cookie_header(form, "ef_console_login").lower()
    assert (
        "httponly" in login_cookie and "samesite=strict" in login_cookie and "path=/console" in login_cookie
    )
    answer = client.post(
        "/console/login",
        data={"csrf": csrf_of(form.text), "token": make_token(ctx, "read")},
        follow_redirects=False,
    )
    session_cookie = cookie_header(answer, "ef_console").lower()
    assert "httponly" in session_cookie and "samesite=strict" in session_cookie
    assert "secure" not in session_cookie  # plain HTTP here: a Secure cookie would never come back
    # Only the digest of the cookie's value is stored.
    value = session_cookie.split(";")[0].split("=", 1)[1]
    with ctx.sessions() as session:
        stored = list(session.scalars(select(ConsoleSession.id_hash)))
    assert stored and value not in stored


def test_the_session_cookie_is_secure_over_https(ctx: ServerContext) -> None:
    with TestClient(create_app(ctx=ctx), base_url="https://console.example") as https:
        form = https.get("/console/login")
        assert "secure" in cookie_header(form, "ef_console_login").lower()
        answer = https.post(
            "/console/login",
            data={"csrf": csrf_of(form.text), "token": make_token(ctx, "read")},
            follow_redirects=False,
        )
        assert "secure" in cookie_header(answer, "ef_console").lower()


def test_sign_in_refuses_bad_tokens_and_forged_forms(client: TestClient, ctx: ServerContext) -> None:
    assert client.get("/console/", follow_redirects=False).headers["location"] == "/console/login"
    form = client.get("/console/login")
    nonce = csrf_of(form.text)
    wrong = client.post("/console/login", data={"csrf": nonce, "token": "efo_nope_nope"})
    assert wrong.status_code == 401 and "unknown or revoked operator token" in wrong.text
    forged = client.post("/console/login", data={"csrf": "guess", "token": make_token(ctx, "admin")})
    assert forged.status_code == 403 and "CSRF" in forged.text
    client.cookies.clear()  # a cross-site form has no login cookie at all
    blind = client.post("/console/login", data={"csrf": nonce, "token": make_token(ctx, "admin")})
    assert blind.status_code == 403
    assert client.get("/console/", follow_redirects=False).status_code == 303  # still signed out


def test_every_view_renders_for_an_admin(
    client: TestClient, ctx: ServerContext, admin: dict[str, str], provisioning: str
) -> None:
    device = SimDevice("view-001")
    assert device.enrol(client, provisioning).status_code == 201
    release = publish(client, admin, "1")
    publish(client, admin, "2")
    rollout_id = start_rollout(client, admin, release["id"])
    sign_in(client, make_token(ctx, "admin"))
    for path, expected in [
        ("/console/", "Fleet overview"),
        ("/console/devices", "view-001"),
        ("/console/devices/view-001", "Installed release and trace"),
        ("/console/releases", "digits"),
        ("/console/rollouts", rollout_id),
        (f"/console/rollouts/{rollout_id}", "Failure rate"),
        (f"/console/rollouts/{rollout_id}/live", "rollout-phase"),
        ("/console/audit", "rollout.create"),
        ("/console/keys", "timestamp"),
    ]:
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert expected in page.text, path
        assert "content-security-policy" in page.headers
    releases = client.get("/console/releases").text
    assert "From" in releases and "digits 1" in releases  # version 2 has a delta from version 1
    assert client.get("/console/devices/nobody").status_code == 404
    assert client.get("/console/rollouts/ro-none").status_code == 404
    assert client.get("/console/static/console.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/console/static/../app.py").status_code == 404


def test_read_only_sees_no_action_and_a_forged_post_is_refused(
    client: TestClient, ctx: ServerContext, admin: dict[str, str]
) -> None:
    release = publish(client, admin)
    rollout_id = start_rollout(client, admin, release["id"])
    csrf = sign_in(client, make_token(ctx, "read"))
    page = client.get(f"/console/rollouts/{rollout_id}").text
    assert "/abort" not in page and 'name="reason"' not in page
    assert "Start rollout" not in client.get("/console/releases").text
    assert "Audit log" not in page
    assert client.get("/console/audit").status_code == 403
    forged = client.post(f"/console/rollouts/{rollout_id}/abort", data={"csrf": csrf, "reason": "forged"})
    assert forged.status_code == 403 and "rollout" in forged.text
    start = client.post("/console/rollouts", data={"csrf": csrf, "release_id": release["id"]})
    assert start.status_code == 403
    assert state_of(ctx, rollout_id) == "running"


def test_a_post_without_the_csrf_token_or_from_another_origin_is_refused(
    client: TestClient, ctx: ServerContext, admin: dict[str, str]
) -> None:
    release = publish(client, admin)
    rollout_id = start_rollout(client, admin, release["id"])
    csrf = sign_in(client, make_token(ctx, "read", "rollout"))
    url = f"/console/rollouts/{rollout_id}/pause"
    assert client.post(url, data={"reason": "no token"}).status_code == 403
    assert client.post(url, data={"csrf": csrf + "x", "reason": "wrong token"}).status_code == 403
    assert client.post(url, json={"csrf": csrf, "reason": "json"}).status_code == 422
    cross = client.post(url, data={"csrf": csrf, "reason": "x"}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert state_of(ctx, rollout_id) == "running"
    # Without a session at all: refused too, nothing changes.
    client.cookies.clear()
    assert client.post(url, data={"csrf": csrf, "reason": "signed out"}).status_code == 401
    assert state_of(ctx, rollout_id) == "running"


def test_rollout_actions_need_a_reason_and_land_in_the_audit_log(
    client: TestClient, ctx: ServerContext, admin: dict[str, str]
) -> None:
    release = publish(client, admin)
    token = make_token(ctx, "read", "rollout")
    csrf = sign_in(client, token)
    started = client.post(
        "/console/rollouts",
        data={"csrf": csrf, "release_id": release["id"], "phases": "25, 100", "failure_threshold": "0.3"},
        follow_redirects=False,
    )
    assert started.status_code == 303, started.text
    rollout_id = started.headers["location"].rsplit("/", 1)[1]
    with ctx.sessions() as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        assert [p["percent"] for p in rollout.phases] == [25, 100] and rollout.failure_threshold == 0.3
    url = f"/console/rollouts/{rollout_id}"
    no_reason = client.post(f"{url}/pause", data={"csrf": csrf, "reason": "  "})
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    assert client.post(f"{url}/resume", data={"csrf": csrf, "reason": "x"}).status_code == 409  # not paused
    assert client.post(f"{url}/explode", data={"csrf": csrf, "reason": "x"}).status_code == 404
    for action, state in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        answer = client.post(f"{url}/{action}", data={"csrf": csrf, "reason": f"{action} for the test"})
        assert answer.status_code == 200 and state in answer.text  # redirected to the rollout page
        assert state_of(ctx, rollout_id) == state
    with ctx.sessions() as session:
        entries = list(session.scalars(select(AuditEntry).where(AuditEntry.subject == rollout_id)))
    token_id = token.split("_")[1]
    assert [e.action for e in entries] == [
        "rollout.create",
        "rollout.pause",
        "rollout.resume",
        "rollout.abort",
    ]
    assert all(e.actor == f"token:{token_id}" for e in entries)
    assert entries[-1].details["reason"] == f"manual abort by token:{token_id}: abort for the test"
    assert "abort for the test" in client.get(url).text  # the timeline shows it


def test_sign_out_and_token_revocation_end_the_session(
    client: TestClient, ctx: ServerContext, admin: dict[str, str]
) -> None:
    token = make_token(ctx, "read")
    csrf = sign_in(client, token)
    assert client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/console/", follow_redirects=False).status_code == 303
    sign_in(client, token)
    token_id = token.split("_")[1]
    assert client.post(f"/v1/tokens/{token_id}/revoke", headers=admin).status_code == 200
    assert client.get("/console/", follow_redirects=False).headers["location"] == "/console/login"


def test_audit_log_filters_by_actor_action_and_time(
    client: TestClient, ctx: ServerContext, admin: dict[str, str]
) -> None:
    old = datetime(2026, 1, 1, tzinfo=UTC)
    with transaction(ctx.sessions) as session:
        session.add(AuditEntry(at=old, actor="auto", action="rollout.abort", subject="ro-old", details={}))
        session.add(AuditEntry(actor="token:abc", action="token.create", subject="abc", details={}))
    sign_in(client, make_token(ctx, "admin"))
    by_actor = client.get("/console/audit", params={"actor": "auto"}).text
    assert "ro-old" in by_actor and "token.create" not in by_actor
    by_action = client.get("/console/audit", params={"action": "token."}).text
    assert "token.create" in by_action and "ro-old" not in by_action
    recent = client.get("/console/audit", params={"since": "2026-06-01T00:00"}).text
    assert "ro-old" not in recent and "token.create" in recent
    window = client.get("/console/audit", params={"since": "2025-12-31T00:00", "until": "2026-01-02T00:00"})
    assert "ro-old" in window.text and "token.create" not in window.text
    assert client.get("/console/audit", params={"since": "yesterday"}).status_code == 422


def _bulk_devices(ctx: ServerContext, count: int, sha256: str | None = None) -> None:
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "id": f"bulk-{i:05d}",
            "public_key": {},
            "keyid": "k" * 64,
            "hardware_profile": "cpu-generic" if i % 3 else "arm64",
            "hardware": {},
            "tags": [],
            "group": "lab" if i % 2 else None,
            "state": "accepted" if i % 5 else "pending",
            "last_report_counter": 0,
            "current_sha256": sha256 if i % 4 == 0 else None,
            "created_at": now,
            "updated_at": now - timedelta(days=10) if i % 7 == 0 else now,
        }
        for i in range(count)
    ]
    with transaction(ctx.sessions) as session:
        session.execute(insert(Device), rows)


def test_devices_page_filters_searches_and_pages_by_id(
    client: TestClient, ctx: ServerContext, admin: dict[str, str]
) -> None:
    release = publish(client, admin)
    _bulk_devices(ctx, 130, release["sha256"])
    with ctx.sessions() as session:
        pages, after = [], None
        while True:
            page = device_page(session, DeviceFilter(), after=after)
            pages.append(page)
            after = page.next_after
            if after is None:
                break
        assert [len(p.rows) for p in pages] == [50, 50, 30] and pages[0].total == 130
        ids = [row.id for p in pages for row in p.rows]
        assert ids == sorted(ids) and len(set(ids)) == 130
        lab_arm = device_page(session, DeviceFilter(profile="arm64", group="lab", state="accepted"))
        expected = [f"bulk-{i:05d}" for i in range(130) if i % 3 == 0 and i % 2 and i % 5]
        assert [r.id for r in lab_arm.rows] == expected and lab_arm.total == len(expected)
        installed = device_page(session, DeviceFilter(release=release["id"]))
        assert installed.total == len(range(0, 130, 4)) and all(
            r.installed == "digits 1" for r in installed.rows
        )
        assert device_page(session, DeviceFilter(release="none")).total == 130 - len(range(0, 130, 4))
        assert device_page(session, DeviceFilter(release="no-such-release")).total == 0
        stale = device_page(session, DeviceFilter(seen="stale"))
        assert stale.total == len(range(0, 130, 7))
        assert device_page(session, DeviceFilter(seen="1h")).total == 130 - stale.total
        search = device_page(session, DeviceFilter(q="bulk-0012"))
        assert [r.id for r in search.rows] == [f"bulk-{i:05d}" for i in range(120, 130)]
        assert device_page(session, DeviceFilter(q="bulk_%")).total == 0  # wildcards are literal
        choices = filter_choices(session)
        assert (choices.profiles, choices.groups) == (["arm64", "cpu-generic"], ["lab"])
        assert choices.releases == [(release["id"], "digits 1 (cpu-generic)")]
        with pytest.raises(ValueError, match="not an indexed filter column"):
            distinct_values(session, "id; DROP TABLE devices")
    sign_in(client, make_token(ctx, "read"))
    first = client.get("/console/devices", params={"group": "lab"})
    assert "65 match" in first.text and 'id="next-page"' in first.text
    nxt = re.search(r'id="next-page" href="([^"]+)"', first.text)
    assert nxt is not None
    second = client.get(nxt.group(1).replace("&amp;", "&"))
    assert "65 match" in second.text and "bulk-00129" in second.text and "bulk-00001" not in second.text


@pytest.mark.parametrize(
    ("source_uri", "run_id", "fingerprint", "expected"),
    [
        ("models:/digits/3?run_id=abc&data_fingerprint=fp1", None, None, ("digits", "3", "abc", "fp1")),
        ("models:/digits/3?run_id=old", "new", "fp2", ("digits", "3", "new", "fp2")),
        (None, "r", None, (None, None, "r", None)),
        ("s3://bucket/model.onnx", None, None, (None, None, None, None)),
    ],
)
def test_trace_reads_the_release_provenance(
    source_uri: str | None, run_id: str | None, fingerprint: str | None, expected: tuple[Any, ...]
) -> None:
    release = Release(source_uri=source_uri, mlflow_run_id=run_id, data_fingerprint=fingerprint)
    trace = trace_of(release)
    assert (trace.registered_model, trace.model_version, trace.run_id, trace.data_fingerprint) == expected


def test_bad_input_gets_a_clear_answer_never_a_server_error(
    client: TestClient, ctx: ServerContext, admin: dict[str, str]
) -> None:
    release = publish(client, admin)
    rollout_id = start_rollout(client, admin, release["id"])
    csrf = sign_in(client, make_token(ctx, "admin"))
    url = f"/console/rollouts/{rollout_id}/pause"
    bad_utf8 = client.post(
        url,
        content=b"csrf=" + csrf.encode() + b"&reason=\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert bad_utf8.status_code == 422 and "malformed form" in bad_utf8.text
    huge = client.post(url, data={"csrf": csrf, "reason": "x" * 20_000})
    assert huge.status_code == 422 and "too large" in huge.text
    too_long = client.post(url, data={"csrf": csrf, "reason": "y" * 600})
    assert too_long.status_code == 422 and "500 characters" in too_long.text
    for form in (
        {"release_id": release["id"], "phases": "ten, twenty"},
        {"release_id": release["id"], "phases": "50, 10"},
        {"release_id": release["id"], "failure_threshold": "2"},
        {"release_id": release["id"], "group": "not a label!"},
        {"release_id": "nope"},
    ):
        answer = client.post("/console/rollouts", data={"csrf": csrf} | form)
        assert answer.status_code in (404, 409, 422), (form, answer.status_code)
        assert "<h1>" in answer.text and "internal" not in answer.text
    assert (
        client.post("/console/rollouts", data={"csrf": csrf, "release_id": release["id"]}).status_code == 409
    )
    for path in (
        "/console/devices?after=%F0%9F%92%A9&q=%27%22%3C",
        "/console/devices?release=x&seen=nonsense&state=weird",
        "/console/audit?actor=%25&action=_",
        "/console/devices/%3Cscript%3E",
    ):
        answer = client.get(path)
        assert answer.status_code in (200, 404), (path, answer.status_code)
        assert "<script>" not in answer.text.replace('<script src="/console/static/console.js"', "")
    assert client.get("/console/audit?until=31.12.2026").status_code == 422
    assert client.get("/console/devices?q=" + "a" * 65).status_code == 422
