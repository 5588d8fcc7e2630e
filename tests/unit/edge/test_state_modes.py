"""The agent's state dir and files are private: directories 0700, files 0600 (issue 9, E)."""

from __future__ import annotations

import os
from pathlib import Path

from ota.edge.state import AgentState, StateStore

from .device_server import DeviceServerSimulator, make_agent


def _modes(root: Path) -> dict[str, int]:
    modes = {".": root.stat().st_mode & 0o777}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                modes[str(path.relative_to(root))] = path.stat().st_mode & 0o777
    return modes


def test_everything_the_agent_writes_is_private(tmp_path: Path):
    state_dir = tmp_path / "agent"
    old_umask = os.umask(0o022)  # a usual umask: without explicit modes, files land 0644 and dirs 0755
    try:
        sim = DeviceServerSimulator()
        agent = make_agent(state_dir, sim)
        assert agent.poll_once().outcome == "installed"
    finally:
        os.umask(old_umask)
    modes = _modes(state_dir)
    for name in (
        "state.json",
        "identity/device_key.pem",
        "identity/device.json",
        "identity/tuf/timestamp.json",
        "slots/a/model.onnx",
        "reports/counter",
    ):
        assert name in modes, sorted(modes)
    wide = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert wide == {}, wide
    directories = {name for name in modes if (state_dir / name).is_dir()}
    assert all(modes[name] == 0o700 for name in directories), {n: oct(modes[n]) for n in directories}


def test_an_existing_wide_state_dir_is_tightened(tmp_path: Path):
    state_dir = tmp_path / "agent"
    state_dir.mkdir(mode=0o755)
    state_dir.chmod(0o755)
    StateStore(state_dir).save(AgentState())
    make_agent(state_dir, DeviceServerSimulator())
    assert state_dir.stat().st_mode & 0o777 == 0o700
    assert (state_dir / "state.json").stat().st_mode & 0o777 == 0o600
