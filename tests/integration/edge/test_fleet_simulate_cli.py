"""``edgefleet fleet simulate`` as the README writes it, against the real server (issue 15, item 6).

The command must need (or create) a provisioning token, take the profile from the server's releases, stop
once the fleet has converged, and exit non-zero naming the cause when it cannot start.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ota.cli import app

from .conftest import LiveServer
from .test_agent_server import PROFILE, linear_onnx

# Nothing from the developer's shell may leak into these runs.
CLEAN_ENV: dict[str, str | None] = {
    "EDGEFLEET_OPERATOR_TOKEN": None,
    "EDGEFLEET_PROVISIONING_TOKEN": None,
    "EDGEFLEET_SERVER": None,
    "COLUMNS": "200",
}


def simulate(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(app, ["fleet", "simulate", *args], env={**CLEAN_ENV, **(env or {})})


def publish_and_roll_out(server: LiveServer) -> None:
    """What the README does before simulating: publish a release, start the staged rollout it shows."""
    release = server.publish(linear_onnx(21, size=128), model="m", version="1", profile=PROFILE)["release"]
    server.rollout(
        release["id"],
        phases=[{"percent": p} for p in (1, 10, 50, 100)],
        failure_threshold=0.1,
    )


@pytest.mark.slow
def test_readme_simulate_converges_and_exits_zero_well_under_its_duration(
    ota_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_and_roll_out(ota_server)
    monkeypatch.chdir(tmp_path)  # the default --work-dir is relative, like a reader's shell
    started = time.monotonic()
    # The README's arguments (20 devices instead of 50; no injected health failures, which could abort
    # the first phases by design); the operator token from the environment, as the README's `trace` uses it.
    result = simulate(
        "--server",
        ota_server.url,
        "--devices",
        "20",
        "--flaky-network",
        "0.1",
        env={"EDGEFLEET_OPERATOR_TOKEN": ota_server.admin_token},
    )
    elapsed = time.monotonic() - started
    print(result.output)
    assert result.exit_code == 0, result.output
    assert "converged" in result.output and "not converged" not in result.output
    assert elapsed < 150, f"took {elapsed:.0f} s of its 300 s duration"
    rows = ota_server.get("/v1/devices")
    devices = rows if isinstance(rows, list) else rows["devices"]
    assert len(devices) == 20
    assert all(d["current_sha256"] for d in devices)
    # Identities are kept per server: one folder under the work dir, named after this server's port.
    folders = list((tmp_path / ".edgefleet" / "fleet").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith(f"127.0.0.1-{ota_server.url.rsplit(':', 1)[1]}-")


def test_a_profile_without_a_release_fails_up_front_listing_the_profiles(
    ota_server: LiveServer, tmp_path: Path
) -> None:
    publish_and_roll_out(ota_server)
    result = simulate(
        "--server",
        ota_server.url,
        "--profile",
        "no-such-profile",
        "--work-dir",
        str(tmp_path / "fleet"),
        env={"EDGEFLEET_OPERATOR_TOKEN": ota_server.admin_token},
    )
    assert result.exit_code == 1
    assert "no release for profile 'no-such-profile'" in result.output
    assert PROFILE in result.output
    assert not (tmp_path / "fleet").exists()  # nothing started


def test_no_token_fails_up_front_naming_what_to_pass(ota_server: LiveServer, tmp_path: Path) -> None:
    result = simulate("--server", ota_server.url, "--work-dir", str(tmp_path / "fleet"))
    assert result.exit_code == 1
    assert "no provisioning token" in result.output
    assert "--provisioning-token" in result.output and "EDGEFLEET_OPERATOR_TOKEN" in result.output


def test_an_operator_token_that_is_refused_is_named_with_the_server_message(
    ota_server: LiveServer, tmp_path: Path
) -> None:
    result = simulate(
        "--server",
        ota_server.url,
        "--work-dir",
        str(tmp_path / "fleet"),
        env={"EDGEFLEET_OPERATOR_TOKEN": "not-a-token"},
    )
    assert result.exit_code == 1
    assert "HTTP 401" in result.output
