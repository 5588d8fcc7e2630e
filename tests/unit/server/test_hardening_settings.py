"""Issue 9 hardening of the server's settings and state: strong token secrets in production (a warning in
development), owner-only state files, and docs/metrics exposure by mode and setting."""

from __future__ import annotations

import logging
import secrets
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from ota.server.app import create_app
from ota.server.blobstore import LocalBlobStore
from ota.server.context import ServerContext, build_context
from ota.server.errors import ConfigError
from ota.server.settings import load_settings, secret_weakness

from .conftest import make_token

WEAK_SECRETS = [
    pytest.param("", id="empty"),
    pytest.param("x", id="one-char"),
    pytest.param("change-me", id="default"),
    pytest.param("s3cret-but-only-31-bytes-long!!", id="31-bytes"),
    pytest.param("a" * 64, id="one-distinct-char"),
    pytest.param("ab" * 40, id="two-distinct-chars"),
    pytest.param("0123" * 12, id="four-distinct-chars"),
]


@pytest.mark.parametrize("secret", WEAK_SECRETS)
def test_production_refuses_weak_secrets_and_says_how_to_make_one(tmp_path: Path, secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(home=tmp_path, mode="production", token_secret=secret)
    message = str(caught.value)
    assert "too weak" in message and "forge" in message
    assert "secrets.token_urlsafe(48)" in message


@pytest.mark.parametrize(
    "secret", [secrets.token_urlsafe(48), secrets.token_hex(32), secrets.token_urlsafe(24)]
)
def test_production_accepts_generated_secrets(tmp_path: Path, secret: str) -> None:
    assert secret_weakness(secret) is None
    assert load_settings(home=tmp_path, mode="production", token_secret=secret).token_secret == secret


def test_development_accepts_a_weak_secret_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ota.server.settings"):
        assert load_settings(home=tmp_path, token_secret="x").token_secret == "x"
    assert any("too weak" in r.getMessage() for r in caplog.records)


def test_development_generates_a_strong_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ota.server.settings"):
        generated = load_settings(home=tmp_path / "home").token_secret
    assert secret_weakness(generated) is None
    assert not caplog.records


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_files_are_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ctx = build_context(load_settings(home=home, token_secret=secrets.token_urlsafe(48)))
    try:
        assert isinstance(ctx.blobs, LocalBlobStore)
        source = tmp_path / "artifact.bin"
        source.write_bytes(b"model bytes")
        ctx.blobs.put_file("targets/abc.m.onnx", source)
        ctx.blobs.put_bytes("targets/def.m.onnx", b"more bytes")
        with ctx.sessions() as session:  # touch the database so SQLite opens its WAL files
            session.execute(text("SELECT 1"))
        for folder in (home, home / "keys", home / "blobs", home / "blobs" / "targets", home / "tmp"):
            assert _mode(folder) == 0o700, folder
        private = [home / "server.db", home / "blobs/targets/abc.m.onnx", home / "blobs/targets/def.m.onnx"]
        private += list(home.glob("server.db-*"))
        private += [p for p in (home / "keys").iterdir() if p.is_file()]
        for path in private:
            assert _mode(path) == 0o600, path
        assert load_settings(home=tmp_path / "dev").token_secret
        assert _mode(tmp_path / "dev" / "token_secret") == 0o600
        assert _mode(tmp_path / "dev") == 0o700
    finally:
        ctx.close()


def _client(ctx: ServerContext, **overrides: object) -> TestClient:
    ctx.settings = ctx.settings.model_copy(update=overrides)
    return TestClient(create_app(ctx=ctx))


DOC_PATHS = ["/docs", "/redoc", "/openapi.json"]


def test_docs_are_on_in_development_and_off_in_production(ctx: ServerContext) -> None:
    with _client(ctx) as client:
        assert [client.get(p).status_code for p in DOC_PATHS] == [200, 200, 200]
    with _client(ctx, mode="production") as client:
        assert [client.get(p).status_code for p in DOC_PATHS] == [404, 404, 404]
    with _client(ctx, mode="production", expose_docs=True) as client:
        assert [client.get(p).status_code for p in DOC_PATHS] == [200, 200, 200]
    with _client(ctx, expose_docs=False) as client:
        assert [client.get(p).status_code for p in DOC_PATHS] == [404, 404, 404]


def test_metrics_need_a_read_token_unless_public(ctx: ServerContext) -> None:
    read = {"Authorization": f"Bearer {make_token(ctx, 'read')}"}
    release_only = {"Authorization": f"Bearer {make_token(ctx, 'release')}"}
    with _client(ctx) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics").json()["error"] == "unauthorized"
        assert client.get("/metrics", headers=release_only).status_code == 403
        answer = client.get("/metrics", headers=read)
        assert answer.status_code == 200 and "edgefleet" in answer.text
    with _client(ctx, metrics_public=True) as client:
        assert client.get("/metrics").status_code == 200
