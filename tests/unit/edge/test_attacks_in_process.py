"""The attack suite's rows in the unit tier: the agent against the real OTA server app, in-process.

The rows, the scene and the assertions are those of ``tests/integration/edge/test_attacks.py`` (imported,
so there is one table); only the ``ota_server`` fixture differs: the FastAPI app served through Starlette's
TestClient transport (``tests/integration/edge/in_process.py``), with no port and no socket. The agent's
whole path runs for real: DeviceApi, director signature checks, python-tuf's ngclient refresh, planning,
download with its limits, install and reports.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.edge.conftest import LiveServer
from tests.integration.edge.in_process import serve_ota_in_process
from tests.integration.edge.test_attacks import (  # noqa: F401 - pytest collects imported tests and fixtures
    scene,
    test_attack_is_refused_and_reported,
    test_freeze_an_old_timestamp_served_after_it_expires_is_refused,
    test_older_release_with_rollback_flag_is_installed,
    test_older_release_without_rollback_flag_is_refused,
    test_operator_rollback_brings_the_device_back_to_release_1,
)


@pytest.fixture
def ota_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    """The real OTA server app, in this process; any attempt to connect a socket fails the test."""

    def no_network(self: socket.socket, *args: object) -> None:
        raise AssertionError(f"the in-process tier opened a network connection to {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    with serve_ota_in_process(tmp_path / "server") as server:
        yield server
