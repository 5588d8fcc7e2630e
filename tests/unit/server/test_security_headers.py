"""Issue 9, item 11: standard security headers on every answer; no-store on per-caller answers only (the TUF
metadata and targets keep their own, cacheable, Cache-Control); HSTS only behind an https public URL."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ota.server.app import create_app
from ota.server.context import ServerContext
from ota.server.testing import SimDevice

BASE = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}


def _has_base(headers: dict[str, str] | object) -> None:
    for name, value in BASE.items():
        assert headers[name] == value, name  # type: ignore[index]


def test_api_answers_carry_security_headers_and_no_store(
    client: TestClient, admin: dict, provisioning: str
) -> None:
    device = SimDevice("dev-h")
    enrolled = device.enrol(client, provisioning)
    device.login(client)
    published = client.put(
        "/v1/releases",
        params={"model": "m", "version": "1", "profile": "p", "artifact_format": "raw"},
        content=b"m" * 100,
        headers=admin,
    )
    answers = [
        enrolled,
        published,
        client.get("/v1/releases", headers=admin),
        client.get("/v1/releases"),  # a 401 too
        device.poll(client),  # slow path, then the hot path
        device.poll(client),
        client.get("/healthz"),
    ]
    for answer in answers:
        _has_base(answer.headers)
        assert answer.headers["cache-control"] == "no-store", answer.request.url
        assert "strict-transport-security" not in answer.headers


def test_tuf_answers_keep_their_cacheable_cache_control(client: TestClient, admin: dict) -> None:
    release = client.put(
        "/v1/releases",
        params={"model": "m", "version": "1", "profile": "p", "artifact_format": "raw"},
        content=b"m" * 100,
        headers=admin,
    ).json()["release"]
    root = client.get("/tuf/metadata/1.root.json")
    target = client.get(f"/tuf/targets/{release['sha256']}.{release['target_name']}")
    for answer in (root, target):
        _has_base(answer.headers)
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert client.get("/tuf/metadata/timestamp.json").headers["cache-control"] == "no-store"


def test_hsts_when_the_public_url_is_https(ctx: ServerContext) -> None:
    ctx.settings = ctx.settings.model_copy(update={"public_base_url": "https://ota.example.com"})
    with TestClient(create_app(ctx=ctx)) as client:
        answer = client.get("/healthz")
        assert answer.headers["strict-transport-security"].startswith("max-age=")
        _has_base(answer.headers)
