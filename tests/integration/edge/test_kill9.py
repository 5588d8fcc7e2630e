"""Fault suite: ``kill -9`` the installer at every stage, restart it, and check the state stays consistent.

Each case installs model 1, then starts installing model 2 (by delta or full download) in a subprocess
that SIGKILLs itself at one point: mid-download, before and in the middle of the delta apply, at the slot
switch, and at the health check. After each kill the persisted state must parse, the committed model
must be intact, and the device must run either the old committed model or the new one pending its
health check. A restart must then finish the update.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from ota.edge.slots import SlotStore
from ota.edge.state import ArtifactRef, Phase, StateStore, UpdatePlan

from .conftest import Behaviour, FaultyServer

DRIVER = Path(__file__).with_name("agent_driver.py")
REPO = Path(__file__).resolve().parents[3]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_driver(
    state_dir: Path, plan: UpdatePlan, crash: str, *, bytes_log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    plan_path = state_dir.parent / f"plan-{plan.version}.json"
    plan_path.write_text(json.dumps(plan.to_json()))
    return subprocess.run(
        [sys.executable, str(DRIVER), str(state_dir), str(plan_path), crash],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "EDGE_DRIVER_BYTES_LOG": str(bytes_log or "")},
        check=False,
    )


def assert_consistent(state_dir: Path, old: bytes, new: bytes) -> None:
    """The invariant after any kill: old committed model intact; device runs old, or new on trial."""
    state = StateStore(state_dir).load()  # parses and checks invariants
    slots = SlotStore(state_dir)
    assert state.committed is not None and state.committed_slot is not None
    committed_bytes = slots.model_path(state.committed_slot).read_bytes()
    assert sha(committed_bytes) == state.committed.sha256
    if state.phase is Phase.INSTALLED_PENDING_HEALTH:
        assert state.active_slot is not None and state.active_slot == state.trial_slot
        assert slots.model_path(state.active_slot).read_bytes() == new
        assert committed_bytes == old
    elif state.committed.sha256 == sha(new):
        assert state.phase is Phase.COMMITTED
    else:
        assert committed_bytes == old
        assert state.active_slot == state.committed_slot


@pytest.fixture
def installed_v1(faulty_server: FaultyServer, tmp_path: Path):
    old = os.urandom(3 * 1024 * 1024)
    edited = bytearray(old)
    edited[1000:5000] = os.urandom(4000)
    new = bytes(edited)
    state_dir = tmp_path / "agent"
    v1 = UpdatePlan(
        target=ArtifactRef(
            name="m/1.onnx", url=faulty_server.add("m/1.onnx", old), length=len(old), sha256=sha(old)
        ),
        version="1",
    )
    result = run_driver(state_dir, v1, "none")
    assert result.returncode == 0, result.stderr
    patch = b"FAKE" + hashlib.sha256(old).digest() + zstandard.ZstdCompressor().compress(new)
    return state_dir, old, new, patch


def _plan_v2(server: FaultyServer, new: bytes, patch: bytes | None, old: bytes) -> UpdatePlan:
    target = ArtifactRef(name="m/2.onnx", url=server.add("m/2.onnx", new), length=len(new), sha256=sha(new))
    if patch is None:
        return UpdatePlan(target=target, version="2")
    delta = ArtifactRef(
        name="m/1-2.patch", url=server.add("m/1-2.patch", patch), length=len(patch), sha256=sha(patch)
    )
    return UpdatePlan(target=target, version="2", delta=delta, delta_base_sha256=sha(old))


@pytest.mark.parametrize(
    ("crash", "use_delta"),
    [
        ("point:downloading", False),
        ("bytes:1000000", False),
        ("point:delta-apply", True),
        ("apply-mid", True),
        ("point:downloaded", True),
        ("point:slot-switch", True),
        ("point:installed", True),
        ("point:health-check", True),
        ("point:committing", True),
    ],
)
def test_kill9_then_restart_finishes_the_update(faulty_server, installed_v1, crash, use_delta):
    state_dir, old, new, patch = installed_v1
    plan = _plan_v2(faulty_server, new, patch if use_delta else None, old)
    killed = run_driver(state_dir, plan, crash)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_consistent(state_dir, old, new)

    finished = run_driver(state_dir, plan, "none")
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["status"] == "committed"
    state = StateStore(state_dir).load()
    assert state.phase is Phase.COMMITTED and state.committed is not None
    assert state.committed.sha256 == sha(new)
    assert (state_dir / "current" / "model.onnx").read_bytes() == new
    assert_consistent(state_dir, old, new)


def test_kill9_mid_download_resumes_with_under_five_percent_twice(faulty_server, installed_v1):
    state_dir, old, new, _ = installed_v1
    plan = _plan_v2(faulty_server, new, None, old)
    log = state_dir.parent / "received.log"
    sent_before = faulty_server.sent("m/2.onnx")
    for cut in ("bytes:800000", "bytes:1900000"):  # two kills, each of a fresh process
        assert run_driver(state_dir, plan, cut, bytes_log=log).returncode == -signal.SIGKILL
        assert_consistent(state_dir, old, new)
    last = run_driver(state_dir, plan, "none")
    assert last.returncode == 0
    # Bytes the device's agent received, over the three processes. The server-side count is higher: it
    # includes what sat in loopback socket buffers (megabytes here) when the process was killed.
    received = sum(int(line) for line in log.read_text().split()) + json.loads(last.stdout)["bytes"]
    twice = (received - len(new)) / len(new)
    served = faulty_server.sent("m/2.onnx") - sent_before
    print(
        f"kill -9 twice mid-download: agent received {received} B for {len(new)} ({twice:.2%} twice); "
        f"server wrote {served} B into sockets"
    )
    assert received >= len(new)
    assert twice <= 0.05


def test_crash_during_health_check_n_times_rolls_back(faulty_server, installed_v1):
    state_dir, old, new, patch = installed_v1
    plan = _plan_v2(faulty_server, new, patch, old)
    # Default max_trial_boots is 3: the install plus two restarts die in the health check, the third restart
    # counts the third boot on trial and rolls back instead of trying again.
    for _ in range(3):
        assert run_driver(state_dir, plan, "point:health-check").returncode == -signal.SIGKILL
        assert_consistent(state_dir, old, new)
    state = StateStore(state_dir).load()
    assert state.phase is Phase.INSTALLED_PENDING_HEALTH and state.trial_boots == 2
    result = run_driver(state_dir, plan, "point:health-check")
    # The rollback happens at startup, before any health check, so the process is not killed.
    state = StateStore(state_dir).load()
    assert state.committed is not None and state.committed.sha256 == sha(old)
    assert (state_dir / "current" / "model.onnx").read_bytes() == old
    assert result.returncode in (0, -signal.SIGKILL)


def test_server_cuts_and_500s_during_install_still_commit(faulty_server, installed_v1):
    state_dir, old, new, _ = installed_v1
    plan = _plan_v2(faulty_server, new, None, old)
    faulty_server.behaviours["/m/2.onnx"] = Behaviour(cut_after=500_000, cut_times=3, fail_first=2)
    result = run_driver(state_dir, plan, "none")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "committed"


def test_full_disk_gives_a_clean_error_and_keeps_the_old_model(faulty_server, installed_v1):
    state_dir, old, new, _ = installed_v1
    plan = _plan_v2(faulty_server, new, None, old)
    result = run_driver(state_dir, plan, "fsize:1000000")
    assert result.returncode == 0, result.stderr  # no crash, no traceback
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "failed"
    assert "cannot write" in outcome["reason"]
    assert_consistent(state_dir, old, new)
    state = StateStore(state_dir).load()
    assert state.phase is Phase.IDLE and state.active_slot == state.committed_slot
    assert (state_dir / "current" / "model.onnx").read_bytes() == old
    # With space again, the same update goes through (resuming the partial file kept in staging).
    assert json.loads(run_driver(state_dir, plan, "none").stdout)["status"] == "committed"
