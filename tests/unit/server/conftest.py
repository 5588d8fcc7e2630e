"""Fixtures for the OTA server's unit tests: a fresh SQLite + local-blob server per test, in process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ota.server.app import create_app
from ota.server.auth import create_operator_token, create_provisioning_token
from ota.server.context import ServerContext, build_context
from ota.server.db import transaction
from ota.server.settings import ServerSettings, load_settings


def unit_settings(home: Path) -> ServerSettings:
    return load_settings(
        home=home,
        token_secret="unit-test-secret",
        poll_jitter=0,
        # Background loops must not interfere with what a test checks.
        cache_refresh_interval=3600,
        resign_check_interval=3600,
        rollout_tick_interval=3600,
        assignment_job_interval=3600,
    )


@pytest.fixture(scope="session")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated database, key folder and initialised repository, copied by every test (fast)."""
    home = tmp_path_factory.mktemp("template") / "home"
    build_context(unit_settings(home)).close()
    return home


def fresh_context(template: Path, home: Path) -> ServerContext:
    shutil.copytree(template, home)
    return build_context(unit_settings(home), migrate=False)


@pytest.fixture
def ctx(tmp_path: Path, template_home: Path) -> Iterator[ServerContext]:
    context = fresh_context(template_home, tmp_path / "home")
    yield context
    context.close()


@pytest.fixture
def client(ctx: ServerContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx=ctx)) as test_client:
        yield test_client


def make_token(ctx: ServerContext, *scopes: str) -> str:
    with transaction(ctx.sessions) as session:
        _row, token = create_operator_token(session, name="test", scopes=scopes)
    return token


def make_provisioning(ctx: ServerContext, *, auto_accept: bool = True) -> str:
    with transaction(ctx.sessions) as session:
        _row, token = create_provisioning_token(session, name="test", auto_accept=auto_accept)
    return token


@pytest.fixture
def admin(ctx: ServerContext) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(ctx, 'admin')}"}


@pytest.fixture
def provisioning(ctx: ServerContext) -> str:
    return make_provisioning(ctx)
