"""Settings refuse default secrets and generated keys outside development; keys are 0600 and k-of-n;
the CLI groups publish releases idempotently and manage tokens and rollouts on embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main
from click.testing import CliRunner

from ota.server.cli import keys_app, release_app, rollout_app, tokens_app
from ota.server.errors import ConfigError, KeyringError
from ota.server.keys import ensure_keyring, init_keys, load_keyring
from ota.server.settings import load_settings


def test_production_refuses_default_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(home=tmp_path, mode="production")
    strong = "k7Qz-9vRt_Lm2XcW4pYs8NbH3jFd6GaE1uKo"
    assert load_settings(home=tmp_path, mode="production", token_secret=strong).token_secret == strong


def test_development_generates_a_private_secret(tmp_path: Path) -> None:
    first = load_settings(home=tmp_path)
    assert first.token_secret != "change-me"
    assert (tmp_path / "token_secret").stat().st_mode & 0o777 == 0o600
    assert load_settings(home=tmp_path).token_secret == first.token_secret


def test_production_refuses_generated_or_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyringError):
        ensure_keyring(tmp_path / "keys", development=False)
    ensure_keyring(tmp_path / "keys", development=True)
    with pytest.raises(KeyringError):
        ensure_keyring(tmp_path / "keys", development=False)
    # Keys made on purpose with `keys init` are what production runs on.
    init_keys(tmp_path / "prod-keys")
    assert ensure_keyring(tmp_path / "prod-keys", development=False).generated is False


def test_keys_are_private_and_k_of_n(tmp_path: Path) -> None:
    keyring = init_keys(tmp_path / "keys", root_keys=3, root_threshold=2)
    assert keyring.roles["root"].threshold == 2 and len(keyring.roles["root"].keys) == 3
    for pem in (tmp_path / "keys").glob("*.pem"):
        assert pem.stat().st_mode & 0o777 == 0o600
    assert len(load_keyring(tmp_path / "keys").signers("root")) == 3
    with pytest.raises(KeyringError):
        init_keys(tmp_path / "keys")  # exists
    with pytest.raises(KeyringError):
        init_keys(tmp_path / "other", root_keys=1, root_threshold=2)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "home"))
    return tmp_path


def invoke(app: typer.Typer, *args: str) -> str:
    result = CliRunner().invoke(typer.main.get_command(app), list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_publish_and_rollout(cli_env: Path) -> None:
    invoke(keys_app, "init", "--root-keys", "2", "--root-threshold", "2")
    token = invoke(tokens_app, "create", "--name", "ci", "--scope", "release").strip()
    assert token.startswith("efo_")
    artifact = cli_env / "m.onnx"
    artifact.write_bytes(b"weights" * 100)
    args = ["publish", "--artifact", str(artifact), "--model", "m", "--version", "1", "--profile", "cpu"]
    refused = CliRunner().invoke(typer.main.get_command(release_app), args)
    assert refused.exit_code == 1 and "not a valid ONNX model" in refused.output
    args.append("--allow-non-onnx")
    assert "published rel-" in invoke(release_app, *args)
    assert "already published" in invoke(release_app, *args)
    artifact.write_bytes(b"other" * 100)
    result = CliRunner().invoke(typer.main.get_command(release_app), args)
    assert result.exit_code == 1 and "already published with sha256" in result.output
    from ota.server.context import build_context

    ctx = build_context(load_settings())
    with ctx.sessions() as session:
        from sqlalchemy import select

        from ota.server.models import Release

        release_id = session.scalars(select(Release.id)).one()
    ctx.close()
    assert "started ro-" in invoke(rollout_app, "start", "--release", release_id, "--phases", "10,100")
    status = json.loads(invoke(rollout_app, "status", "--json"))
    assert status[0]["phases"][status[0]["phase_index"]] == 10 and status[0]["state"] == "running"
    rollout_id = status[0]["id"]
    assert "paused" in invoke(rollout_app, "pause", rollout_id)
    result = CliRunner().invoke(typer.main.get_command(rollout_app), ["pause", rollout_id])
    assert result.exit_code == 1 and "cannot pause" in result.output


def test_rollout_phases_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_ROLLOUT_PHASES", "[5, 25, 100]")
    monkeypatch.setenv("EDGEFLEET_ROLLOUT_MIN_SOAK_SECONDS", "600")
    phases = load_settings(home=tmp_path).default_phases()
    assert [p.percent for p in phases] == [5, 25, 100]
    assert {p.min_soak_seconds for p in phases} == {600}
