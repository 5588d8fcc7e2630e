"""Settings refuse default secrets and generated keys outside development; keys are 0600 and k-of-n;
the CLI groups publish releases idempotently and manage tokens and rollouts on embedded defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_rollout_phases_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_ROLLOUT_PHASES", "[5, 25, 100]")
    monkeypatch.setenv("EDGEFLEET_ROLLOUT_MIN_SOAK_SECONDS", "600")
    phases = load_settings(home=tmp_path).default_phases()
    assert [p.percent for p in phases] == [5, 25, 100]
    assert {p.min_soak_seconds for p in phases} == {600}


# The operator commands (tokens, release, rollout) go through the API now: their CLI tests are
# tests/integration/server/test_operator_cli.py, against a live server.


def test_public_url_derives_from_the_bind_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEFLEET_PUBLIC_BASE_URL", raising=False)
    settings = load_settings(home=tmp_path, port=18123)
    assert settings.public_base_url == ""  # the default: derived, never a fixed port
    assert settings.advertised_base_url() == "http://127.0.0.1:18123"
    assert settings.public_url_mismatch() is None
    assert load_settings(home=tmp_path, host="10.0.0.5", port=9).advertised_base_url() == "http://10.0.0.5:9"
    assert load_settings(home=tmp_path, host="::1", port=9).advertised_base_url() == "http://[::1]:9"
    wildcard = load_settings(home=tmp_path, host="0.0.0.0", port=18123)
    assert wildcard.advertised_base_url("ota.example:18123") == "http://ota.example:18123"
    assert wildcard.advertised_base_url("evil/x?") == "http://127.0.0.1:18123"  # not a host[:port]
    monkeypatch.setenv("EDGEFLEET_PORT", "18124")
    assert load_settings(home=tmp_path).advertised_base_url() == "http://127.0.0.1:18124"


def test_an_explicit_public_url_wins_and_a_port_mismatch_is_named(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, port=18123, public_base_url="http://ota.example:8000/")
    assert settings.advertised_base_url("other:1") == "http://ota.example:8000"
    warning = settings.public_url_mismatch()
    assert warning is not None and "port 8000" in warning and "port 18123" in warning
    https = load_settings(home=tmp_path, port=443, public_base_url="https://ota.example")
    assert https.public_url_mismatch() is None


def test_migrate_says_what_it_did_and_bootstrap_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner as TyperRunner

    from ota.cli import app

    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "home"))
    first = TyperRunner().invoke(app, ["server", "migrate"])
    assert first.exit_code == 0 and "created the schema at revision 0003" in first.output, first.output
    again = TyperRunner().invoke(app, ["server", "migrate"])
    assert again.exit_code == 0 and "already at revision 0003" in again.output, again.output
    token = TyperRunner().invoke(app, ["server", "bootstrap-token"])
    assert token.exit_code == 0 and token.stdout.strip().splitlines()[-1].startswith("efo_"), token.output
    assert TyperRunner().invoke(app, ["--version"]).output.startswith("edgefleet ")
