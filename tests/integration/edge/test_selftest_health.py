"""End to end: a release's self-test vectors travel from the publish API to the agent's health check.

The real OTA server (SQLite + local blobs) signs each model with its vectors as a separate TUF target;
the real agent finds them through the model target's ``selftest`` custom field, downloads them through
python-tuf's ngclient and runs ``run_health_check``. A model whose outputs agree with its vectors is
committed; one whose outputs disagree is rolled back to the previous model and the failure is reported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ota.core.selftest import save_vectors
from ota.edge.state import Phase
from ota.server.status_cli import rollout_report

from .conftest import LiveServer
from .test_agent_server import PROFILE, linear_onnx, make_agent, poll_until

SIZE = 64


def vectors_for(model: bytes, path: Path, *, count: int = 6, seed: int = 0) -> bytes:
    """Vectors the way the release pipeline makes them: run ``model`` on fixed inputs, record its outputs."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    inputs = np.random.default_rng(seed).normal(size=(count, SIZE)).astype(np.float32)
    # One row per run with a batch of one, as the health check feeds them.
    logits = np.concatenate([session.run(None, {"x": inputs[i : i + 1]})[0] for i in range(count)])
    save_vectors(
        path,
        inputs=inputs,
        expected_top1=logits.argmax(axis=1),
        expected_logits=logits,
        tolerance=1e-3,
    )
    return path.read_bytes()


def publish_with_vectors(server: LiveServer, model: bytes, vectors: bytes, version: str) -> dict[str, Any]:
    with server.http() as http:
        staged = http.put(
            "/v1/releases/selftest",
            content=vectors,
            headers=server.admin | {"Content-Type": "application/octet-stream"},
        )
        assert staged.status_code == 201, staged.text
        answer = http.put(
            "/v1/releases",
            params={
                "model": "st",
                "version": version,
                "profile": PROFILE,
                "selftest_sha256": staged.json()["sha256"],
            },
            content=model,
            headers=server.admin | {"Content-Type": "application/octet-stream"},
        )
    assert answer.status_code == 201, answer.text
    release: dict[str, Any] = answer.json()["release"]
    assert release["selftest_target"] == f"st-{version}-{PROFILE}.selftest.npz"
    return release


def device_row(server: LiveServer, device_id: str) -> dict[str, Any]:
    devices = server.get("/v1/devices")
    rows = devices if isinstance(devices, list) else devices.get("devices", [])
    mine = [d for d in rows if d.get("id", d.get("device_id")) == device_id]
    assert mine, f"the server does not list device {device_id}"
    return dict(mine[0])


def test_vectors_gate_the_commit(ota_server: LiveServer, tmp_path: Path) -> None:
    good = linear_onnx(1, size=SIZE)
    good_vectors = vectors_for(good, tmp_path / "good.npz")
    agent = make_agent(ota_server, tmp_path / "agent")
    assert agent.poll_once().outcome == "no-target"

    # 1. A model that agrees with its own vectors passes the health check and is committed.
    r1 = publish_with_vectors(ota_server, good, good_vectors, "1")
    first = ota_server.rollout(r1["id"])
    assert poll_until(agent, {"installed", "rolled-back", "failed"}).outcome == "installed"
    assert (tmp_path / "agent" / "current" / "model.onnx").read_bytes() == good
    committed_vectors = tmp_path / "agent" / "current" / "selftest.npz"
    assert committed_vectors.read_bytes() == good_vectors  # the shipped vectors, fetched through TUF
    poll_until(agent, {"up-to-date", "unchanged"})
    # `rollout status` counts the vectors on both sides: what the device downloaded, and what it would have
    # downloaded without deltas. One full install downloads exactly the model and its vectors.
    with ota_server.ctx.sessions() as session:
        report = rollout_report(session, first["id"])
    assert report.selftest_bytes == len(good_vectors)
    assert report.full_installs == 1 and report.full_bytes == len(good) + len(good_vectors)
    assert report.full_equivalent_bytes == report.full_bytes

    # 2. Other weights shipped with the first model's vectors: outputs disagree → rolled back to v1.
    bad = linear_onnx(2, size=SIZE)
    r2 = publish_with_vectors(ota_server, bad, good_vectors, "2")
    ota_server.rollout(r2["id"])
    failed = poll_until(agent, {"installed", "rolled-back", "failed"})
    assert failed.outcome == "rolled-back", failed
    assert failed.detail and "selftest" in failed.detail
    assert (tmp_path / "agent" / "current" / "model.onnx").read_bytes() == good
    state = agent.installer.state()
    assert state.phase is Phase.ROLLED_BACK and state.committed is not None
    assert state.committed.sha256 == hashlib.sha256(good).hexdigest()
    assert agent.reports.pending() == []  # the rollback report reached the server
    assert device_row(ota_server, agent.device_id).get("current_sha256") == hashlib.sha256(good).hexdigest()

    # 3. The same weights as the rejected model, now with vectors that match them: committed. So it was
    #    the vectors, not the model file, that failed step 2.
    fixed_vectors = vectors_for(bad, tmp_path / "fixed.npz")
    r3 = publish_with_vectors(ota_server, bad, fixed_vectors, "3")
    poll_until(agent, {"up-to-date", "unchanged", "skipped"})
    ota_server.rollout(r3["id"])
    fixed = poll_until(agent, {"installed", "rolled-back", "failed"})
    assert fixed.outcome == "installed", fixed
    assert (tmp_path / "agent" / "current" / "model.onnx").read_bytes() == bad
    assert device_row(ota_server, agent.device_id).get("current_sha256") == hashlib.sha256(bad).hexdigest()
