"""A corrupt ``state.json`` is moved aside, rebuilt from the slots and reported once (issue 9, D)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .device_server import DeviceServerSimulator, make_agent

CORRUPTIONS = {
    "not-json": lambda good: b'{"phase": "committed", "active_sl',
    "binary": lambda good: b"\x00\xff" * 100,
    "invalid-state": lambda good: json.dumps({**json.loads(good), "active_slot": "c"}).encode(),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_state_file_is_moved_aside_recovered_from_the_slots_and_reported_once(tmp_path: Path, kind):
    sim = DeviceServerSimulator()
    agent = make_agent(tmp_path, sim)
    assert agent.poll_once().outcome == "installed"
    before = agent.installer.state()
    good = (tmp_path / "state.json").read_bytes()
    (tmp_path / "state.json").write_bytes(CORRUPTIONS[kind](good))

    # A restarted agent (the state is read at its first poll): no endless error loop.
    sim.reports.clear()
    restarted = make_agent(tmp_path, sim)
    results = [restarted.poll_once() for _ in range(3)]

    assert results[0].outcome in {"up-to-date", "unchanged"}, results
    [aside] = list(tmp_path.glob("state.json.corrupt-*"))
    assert aside.read_bytes() == CORRUPTIONS[kind](good)
    state = restarted.installer.state()
    # The committed model and its slot survive, derived from the `current` link and the slot's file.
    assert state.committed_slot == before.committed_slot == state.active_slot
    assert state.committed is not None and state.committed.sha256 == before.committed.sha256
    if kind == "invalid-state":  # what still parses is salvaged: replay protection keeps its counter
        assert state.highest_assignment_counter == before.highest_assignment_counter
    failures = [r for r in sim.reports if r["status"] == "failed"]
    assert len(failures) == 1, sim.reports
    assert not failures[0]["attack"] and "corrupt" in failures[0]["details"]["reason"]


def test_a_corrupt_state_file_on_a_fresh_device_recovers_an_empty_state(tmp_path: Path):
    sim = DeviceServerSimulator()
    (tmp_path / "state.json").write_bytes(b"garbage")
    agent = make_agent(tmp_path, sim)
    assert agent.poll_once().outcome == "installed"
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1
