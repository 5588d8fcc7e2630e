"""``registry.ota_history.read_rollout`` through the operator client against a mocked OTA server: the
answer parsed, every failure a RegistryError naming the cause."""

from __future__ import annotations

import httpx
import pytest

from registry.errors import RegistryError
from registry.ota_history import RolloutRecord, read_rollout

# ---- the HTTP reader, against a faked OTA server ------------------------------------------------------


def _transport(status: int, body: object) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer op-token"
        assert request.url.path == "/v1/rollouts/ro-9"
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


ROLLOUT = {
    "id": "ro-9", "release_id": "rel-1", "previous_release_id": None, "selector": {}, "phases": [],
    "phase_index": 0, "succeeded": 1, "failed": 4, "in_progress": 0,
}  # fmt: skip


def test_read_rollout_parses_the_servers_answer() -> None:
    answer = {**ROLLOUT, "state": "aborted", "reason": "failure rate 0.5 > 0.1"}
    record = read_rollout("http://ota.invalid", "ro-9", token="op-token", transport=_transport(200, answer))
    assert record == RolloutRecord("ro-9", "aborted", "failure rate 0.5 > 0.1") and record.withdrawn


@pytest.mark.parametrize(
    ("status", "body", "fragment"),
    [
        (401, {"error": "unknown operator token"}, "HTTP 401: unknown operator token"),
        (404, {"error": "no rollout ro-9"}, "HTTP 404"),
        (200, {"id": "ro-9"}, "not a rollout"),
    ],
)
def test_read_rollout_maps_failures_to_registry_errors(status: int, body: object, fragment: str) -> None:
    with pytest.raises(RegistryError, match=fragment):
        read_rollout("http://ota.invalid", "ro-9", token="op-token", transport=_transport(status, body))


def test_an_unreachable_server_is_a_registry_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(RegistryError, match=r"cannot read rollout ro-9 from http://ota\.invalid"):
        read_rollout("http://ota.invalid", "ro-9", token="op-token", transport=httpx.MockTransport(refuse))
