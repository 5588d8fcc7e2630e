"""End to end against the real OTA server: enrol, full install, delta install, reports, attacks refused.

The server (``ota.server``) runs on uvicorn in a thread with SQLite and local blobs; the agent runs
in-process with a real HTTP client. Models are tiny ONNX files made with onnx.helper.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from ota.edge.agent import Agent
from ota.edge.config import AgentConfig
from ota.edge.state import Phase
from tests.onnx_factory import linear_onnx as make_linear_onnx

from .conftest import LiveServer

PROFILE = "edge-it"


def linear_onnx(seed: int, *, size: int = 64, tweak: float = 0.0) -> bytes:
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(size, 10)).astype(np.float32)
    weights[0, :] += tweak  # a small retrain: most bytes stay the same
    return make_linear_onnx(weights)


def make_agent(server: LiveServer, state_dir: Path, **kwargs) -> Agent:
    config = AgentConfig(
        poll_interval_min_s=0.1,
        poll_interval_default_s=1,
        retry_base_s=0.05,
        retry_cap_s=0.2,
        warmup_runs=1,
        latency_runs=3,
        ort_intra_op_threads=1,
    )
    return Agent(
        server_url=server.url,
        state_dir=state_dir,
        config=config,
        provisioning_token=server.provisioning_token,
        profile=PROFILE,
        rng=random.Random(0),
        **kwargs,
    )


def poll_until(agent: Agent, wanted: set[str], attempts: int = 20):
    result = None
    for _ in range(attempts):
        result = agent.poll_once()
        if result.outcome in wanted:
            return result
    raise AssertionError(f"never reached {wanted}: last {result}")


def test_enrol_install_full_then_delta_and_report(ota_server: LiveServer, tmp_path: Path):
    v1 = linear_onnx(1, size=512)
    v2 = linear_onnx(1, size=512, tweak=0.5)
    r1 = ota_server.publish(v1, model="m", version="1", profile=PROFILE)["release"]
    agent = make_agent(ota_server, tmp_path / "agent")

    assert agent.poll_once().outcome == "no-target"  # enrolled and accepted, nothing assigned yet
    assert (tmp_path / "agent" / "identity" / "tuf" / "root.json").is_file()
    ota_server.rollout(r1["id"])
    first = poll_until(agent, {"installed"})
    assert first.detail == "full"
    assert (tmp_path / "agent" / "current" / "model.onnx").read_bytes() == v1
    assert agent.poll_once().outcome in {"up-to-date", "unchanged"}

    published = ota_server.publish(v2, model="m", version="2", profile=PROFILE)
    assert published["deltas"], "the server should have built a delta from v1"
    bytes_before = agent.fetcher.total_bytes_transferred
    poll_until(agent, {"up-to-date", "unchanged"})  # let the first rollout finish before starting the next
    ota_server.rollout(published["release"]["id"])
    second = poll_until(agent, {"installed"})
    assert second.detail == "delta"
    assert (tmp_path / "agent" / "current" / "model.onnx").read_bytes() == v2
    delta_bytes = agent.fetcher.total_bytes_transferred - bytes_before
    print(f"delta install: {delta_bytes} B for a {len(v2)} B model ({delta_bytes / len(v2):.1%})")
    assert delta_bytes < len(v2) / 2

    state = agent.installer.state()
    assert state.phase is Phase.COMMITTED and state.committed is not None
    assert state.committed.version == "2"
    assert agent.reports.pending() == []  # every report was accepted
    devices = ota_server.get("/v1/devices")
    mine = [
        d
        for d in (devices if isinstance(devices, list) else devices.get("devices", []))
        if d.get("id", d.get("device_id")) == agent.device_id
    ]
    assert mine and mine[0].get("current_sha256") == hashlib.sha256(v2).hexdigest()


def test_tampered_target_is_refused_as_an_attack(ota_server: LiveServer, tmp_path: Path):
    v1 = linear_onnx(3, size=256)
    release = ota_server.publish(v1, model="m", version="1", profile=PROFILE)["release"]
    # A compromised blob store: the bytes served no longer match the signed hash.
    blobs = [p for p in ota_server.home.rglob("*") if p.is_file() and p.read_bytes() == v1]
    assert blobs, "could not find the stored artifact to tamper with"
    for blob in blobs:
        blob.write_bytes(bytes(len(v1)))
    agent = make_agent(ota_server, tmp_path / "agent")
    ota_server.rollout(release["id"])
    result = poll_until(agent, {"failed"})
    assert result.attack
    assert agent.installer.state().committed is None
    assert not (tmp_path / "agent" / "current").exists()
    # Not retried until the assignment changes.
    assert poll_until(agent, {"skipped", "unchanged"}).outcome in {"skipped", "unchanged"}


def test_assignment_for_another_profile_is_refused(ota_server: LiveServer, tmp_path: Path):
    release = ota_server.publish(linear_onnx(4), model="m", version="1", profile=PROFILE)["release"]
    ota_server.rollout(release["id"])
    agent = make_agent(ota_server, tmp_path / "agent")
    agent.poll_once()
    # The device now claims another profile than the one the server has on record (and signs into
    # assignments): the agent must refuse the assignment rather than install a model built for other hardware.
    from dataclasses import replace

    agent.hardware = replace(agent.hardware, name="other-profile")
    agent._etag = None
    result = agent.poll_once()
    assert result.outcome == "failed" and result.attack
    assert "profile" in (result.detail or "")


@pytest.mark.parametrize("offset_s", [3600.0, -3600.0])
def test_device_clock_an_hour_off_still_installs(ota_server: LiveServer, tmp_path: Path, offset_s: float):
    # The offset applies to the director's expiry and to ngclient's (see the freeze test in test_attacks).
    release = ota_server.publish(linear_onnx(5), model="m", version="1", profile=PROFILE)["release"]
    ota_server.rollout(release["id"])
    agent = make_agent(ota_server, tmp_path / "agent", clock_offset_s=offset_s)
    assert poll_until(agent, {"installed"}).outcome == "installed"


def test_device_clock_beyond_the_expiry_margin_is_refused(ota_server: LiveServer, tmp_path: Path):
    # The margin is the shortest lifetime, 24 h (timestamp and assignment): a day and an hour ahead, the
    # device sees everything as expired and installs nothing; it does not accept stale data silently.
    release = ota_server.publish(linear_onnx(5), model="m", version="1", profile=PROFILE)["release"]
    ota_server.rollout(release["id"])
    agent = make_agent(ota_server, tmp_path / "agent", clock_offset_s=25 * 3600.0)
    result = poll_until(agent, {"installed", "failed"})
    assert result.outcome == "failed" and "expired" in (result.detail or "").lower(), result
    assert agent.installer.state().committed is None


def test_cli_run_once_enrols_and_installs(ota_server: LiveServer, tmp_path: Path):
    from typer.testing import CliRunner

    from ota.edge.cli import agent_app

    model = linear_onnx(6)
    release = ota_server.publish(model, model="m", version="1", profile=PROFILE)["release"]
    ota_server.rollout(release["id"])
    state_dir = tmp_path / "cli-agent"
    args = ["run", "--server", ota_server.url, "--state-dir", str(state_dir), "--profile", PROFILE, "--once"]
    runner = CliRunner()
    first = runner.invoke(agent_app, [*args, "--provisioning-token", ota_server.provisioning_token])
    assert first.exit_code == 0, first.output
    assert '"outcome": "installed"' in first.output
    assert (state_dir / "current" / "model.onnx").read_bytes() == model
    key_mode = (state_dir / "identity" / "device_key.pem").stat().st_mode & 0o777
    assert key_mode == 0o600
    status = runner.invoke(agent_app, ["status", "--state-dir", str(state_dir)])
    assert status.exit_code == 0 and '"phase": "committed"' in status.output


def test_a_pending_device_restarted_without_its_token_learns_it_was_accepted(
    ota_server: LiveServer, tmp_path: Path
):
    # The README's admission flow: enrol with a manual-admission token, get accepted, run again without
    # the token (as `edgefleet-agent --server … --state-dir …` does): the agent must not stay "pending".
    with ota_server.http() as http:
        created = http.post("/v1/provisioning-tokens", json={"name": "line-3"}, headers=ota_server.admin)
    assert created.status_code == 201, created.text
    manual_token = created.json()["token"]
    release = ota_server.publish(linear_onnx(3, size=256), model="m", version="1", profile=PROFILE)["release"]
    ota_server.rollout(release["id"])
    state_dir = tmp_path / "agent"
    first = make_agent(ota_server, state_dir)
    first.provisioning_token = manual_token
    assert first.poll_once().outcome == "pending"

    restarted = make_agent(ota_server, state_dir)
    restarted.provisioning_token = None
    assert restarted.poll_once().outcome == "pending"  # still pending: the token endpoint says 403
    with ota_server.http() as http:
        accepted = http.post(
            f"/v1/devices/{restarted.device_id}/admission/accepted", json={}, headers=ota_server.admin
        )
    assert accepted.status_code == 200, accepted.text
    assert poll_until(restarted, {"installed"}).outcome == "installed"
    assert restarted.identity.load_enrolment().admission == "accepted"
