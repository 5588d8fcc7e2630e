"""A device enrolled while the server advertised a wrong public URL recovers once the server is fixed.

Issue 15, item 4 (the agent's side): a server on port A advertising ``http://127.0.0.1:<dead>`` hands every
enrolling device repository URLs that refuse connections, and the device kept them for ever. After the
server restarts with the right URL, the agent (started with port A) must re-read its enrolment and install.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from ota.edge.identity import DeviceIdentity
from ota.server.testing import free_port

from .conftest import LiveServer, serve_ota
from .test_agent_server import PROFILE, linear_onnx, make_agent, poll_until


def served(home: Path, port: int, public_base_url: str) -> AbstractContextManager[LiveServer]:
    return serve_ota(home, port=port, public_base_url=public_base_url, label="stale-url")


@pytest.mark.parametrize("token_on_restart", [True, False], ids=["re-enrols", "no-token-uses-own-url"])
def test_agent_recovers_from_a_wrong_stored_public_url(tmp_path: Path, token_on_restart: bool) -> None:
    port, dead = free_port(), free_port()
    home, state = tmp_path / "server", tmp_path / "agent"
    model = linear_onnx(31, size=64)
    with served(home, port, f"http://127.0.0.1:{dead}") as wrong:
        agent = make_agent(wrong, state)
        assert agent.poll_once().outcome == "no-target"  # enrolled, accepted, nothing assigned yet
        assert f":{dead}/" in DeviceIdentity(state).load_enrolment().metadata_url  # the wrong URL is stored
        agent.client.close()
    with served(home, port, f"http://127.0.0.1:{port}") as fixed:
        release = fixed.publish(model, model="m", version="1", profile=PROFILE)["release"]
        fixed.rollout(release["id"])
        restarted = make_agent(fixed, state)
        if not token_on_restart:
            restarted.provisioning_token = None  # `agent run` without --provisioning-token after enrolment
        assert poll_until(restarted, {"installed"}).outcome == "installed"
        assert (state / "current" / "model.onnx").read_bytes() == model
        stored = DeviceIdentity(state).load_enrolment()
        if token_on_restart:  # the server's answer is authoritative: stored
            assert stored.metadata_url == f"http://127.0.0.1:{port}/tuf/metadata/"
            assert stored.targets_url == f"http://127.0.0.1:{port}/tuf/targets/"
        else:  # the agent's own server URL is a per-poll fallback, never stored
            assert f":{dead}/" in stored.metadata_url
        device = next(d for d in fixed.get("/v1/devices") if d["id"] == restarted.device_id)
        assert device["current_sha256"] == hashlib.sha256(model).hexdigest()
        restarted.client.close()
