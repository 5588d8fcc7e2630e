"""A full disk must not wedge the agent (issue 9, C).

Two tiers: ``shutil.disk_usage`` monkeypatched to report too little space (the pre-download check), and a
real 4 MiB tmpfs filled by "another process" halfway through a download (a real ``ENOSPC``; skipped where
mounting is not allowed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ota.edge import install
from ota.edge.config import AgentConfig

from .device_server import DeviceServerSimulator, make_agent

MIB = 1024 * 1024
Usage = namedtuple("Usage", "total used free")


def _failure_reports(sim: DeviceServerSimulator) -> list[dict]:
    return [r for r in sim.reports if r["status"] == "failed"]


def test_too_little_free_space_refuses_before_downloading_and_reports_a_failure(tmp_path, monkeypatch):
    sim = DeviceServerSimulator(model=os.urandom(256 * 1024))
    agent = make_agent(tmp_path, sim)
    free = {"bytes": 1 * MIB}  # less than the target (256 KiB) plus the 4 MiB default margin
    monkeypatch.setattr(install.shutil, "disk_usage", lambda path: Usage(10 * MIB, 9 * MIB, free["bytes"]))

    result = agent.poll_once()

    assert result.outcome == "failed" and not result.attack, result
    assert "disk space" in (result.detail or "")
    assert "target" not in sim.calls, "nothing may be downloaded"
    [report] = _failure_reports(sim)
    assert not report["attack"] and "disk space" in report["details"]["reason"]
    assert agent.installer.state().phase.value == "idle"
    assert list((tmp_path / "staging").iterdir()) == []

    # Space is freed and the director decides again: the same agent installs.
    free["bytes"] = 100 * MIB
    sim.reassign(counter=2)
    assert agent.poll_once().outcome == "installed"


def test_space_needed_counts_the_delta_and_its_result_and_the_margin(tmp_path):
    sim = DeviceServerSimulator()
    agent = make_agent(tmp_path, sim, config=AgentConfig(disk_margin_bytes=1000))
    from ota.edge.state import AgentState, ArtifactRef, InstalledModel, UpdatePlan

    base = "a" * 64
    plan = UpdatePlan(
        target=ArtifactRef(name="m/2", url="http://x/2", length=5000, sha256="b" * 64),
        delta=ArtifactRef(name="m/d", url="http://x/d", length=700, sha256="c" * 64),
        delta_base_sha256=base,
        selftest=ArtifactRef(name="m/v", url="http://x/v", length=300, sha256="d" * 64),
    )
    committed = InstalledModel(sha256=base, length=4000, version="1", target_name="m/1")
    on_base = AgentState(active_slot="a", committed_slot="a", committed=committed)
    assert agent.installer.space_needed(on_base, plan) == 5000 + 700 + 300 + 1000
    assert agent.installer.space_needed(AgentState(), plan) == 5000 + 300 + 1000  # the delta does not apply


# ---- a real full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted under tmp_path (needs root, or skips)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_disk_that_fills_up_mid_download_is_cleaned_reported_and_survived(small_disk: Path):
    state_dir = small_disk / "agent"
    filler = small_disk / "someone-elses-log"
    sim = DeviceServerSimulator(model=os.urandom(3 * MIB))
    config = AgentConfig(poll_interval_min_s=5, disk_margin_bytes=64 * 1024)
    agent = make_agent(state_dir, sim, config=config)

    def fill_then_serve(request: httpx.Request) -> httpx.Response:
        # Another process fills the disk after the free-space check passed: the download meets ENOSPC.
        if not filler.exists():
            with contextlib.suppress(OSError), filler.open("wb") as handle:
                handle.write(b"\0" * (2 * MIB))
        return sim.honest(request)

    sim.override["target"] = fill_then_serve
    result = agent.poll_once()

    assert result.outcome == "failed" and not result.attack, result
    # The partial download is gone, the state is readable and at rest, and the failure reached the server.
    assert [p.name for p in (state_dir / "staging").iterdir()] == []
    assert agent.installer.state().phase.value == "idle"
    [report] = _failure_reports(sim)
    assert not report["attack"]
    assert agent.reports.pending() == []

    # Later polls keep working; once the disk has room again and the director re-decides, it installs.
    assert agent.poll_once().outcome in {"skipped", "unchanged"}
    filler.unlink()
    sim.override.clear()
    sim.reassign(counter=2)
    assert agent.poll_once().outcome == "installed"
    assert (state_dir / "current" / "model.onnx").read_bytes() == sim.model
