"""The fleet simulator's honest parts without a server: causes of errors, per-server work dirs, setup."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ota.edge.fleet import (
    FleetOptions,
    FleetSetupError,
    FleetSummary,
    OperatorApi,
    _apply,
    error_cause,
    fleet_converged,
    prepare_fleet,
    server_work_dir,
)

# outcome, detail (as the agent's poll result carries it), expected cause
CAUSES = [
    (
        "error",
        'HttpStatusError: token answered 401: {"error": "unknown device or bad signature"}',
        "HTTP 401: unknown device or bad signature",
    ),
    (
        "error",
        "ApiTransportError: enrolment: ConnectError: [Errno 111] Connection refused",
        "connection refused",
    ),
    ("error", "ApiTransportError: challenge: ConnectError: simulated dropped connection", "dropped"),
    ("failed", "TUF metadata refused: ExpiredMetadataError: timestamp.json is expired", "TUF refusal"),
    ("error", "this device is not enrolled; pass --provisioning-token", "not enrolled"),
    ("pending", "awaiting operator admission", "awaiting admission"),
    ("error", "ApiTransportError: assignment: ReadTimeout: timed out", "timeout"),
]


@pytest.mark.parametrize(("outcome", "detail", "expected"), CAUSES)
def test_error_causes_are_named(outcome: str, detail: str, expected: str) -> None:
    assert error_cause(outcome, detail).startswith(expected)


def test_summary_groups_causes_and_tracks_settled_devices() -> None:
    summary = FleetSummary()
    detail = 'HttpStatusError: token answered 403: {"error": "device revoked"}'
    for _ in range(3):
        _apply(summary, {"device": "a", "outcome": "error", "detail": detail})
    _apply(summary, {"device": "b", "outcome": "up-to-date", "version": "1"})
    _apply(summary, {"device": "b", "outcome": "unchanged", "version": "1"})
    assert summary.causes == {"HTTP 403: device revoked": 3}
    assert summary.settled() == 1
    assert not fleet_converged(summary, devices=2, rollout_running=None)
    _apply(summary, {"device": "a", "outcome": "up-to-date", "version": "1"})
    assert fleet_converged(summary, devices=2, rollout_running=None)
    assert not fleet_converged(summary, devices=2, rollout_running=lambda: True)


def _root_server(root: bytes) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/tuf/metadata/1.root.json"
        return httpx.Response(200, content=root)

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_work_dirs_are_per_server_url_and_server_identity(tmp_path: Path) -> None:
    first = server_work_dir(tmp_path, "http://127.0.0.1:18001", client=_root_server(b"root-A"))
    assert first == server_work_dir(tmp_path, "http://127.0.0.1:18001/", client=_root_server(b"root-A"))
    assert first.name.startswith("127.0.0.1-18001-")
    # Another port, or a fresh server (new root) on the same port: never the same identities.
    assert first != server_work_dir(tmp_path, "http://127.0.0.1:18002", client=_root_server(b"root-A"))
    assert first != server_work_dir(tmp_path, "http://127.0.0.1:18001", client=_root_server(b"root-B"))


def _operator(status: int, body: object) -> OperatorApi:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    return OperatorApi("http://ota.invalid", "t", transport=transport)


def _release(profile: str) -> dict[str, object]:
    return {
        "id": f"rel-{profile}", "model": "m", "version": "1", "profile": profile, "sha256": "ab" * 32,
        "length": 10, "target_name": f"m/{profile}/1.onnx", "created_at": "2026-01-01T00:00:00Z",
    }  # fmt: skip


def test_auto_profile_with_several_release_profiles_lists_them(tmp_path: Path) -> None:
    api = _operator(200, [_release("cam-v2"), _release("cpu-int8-small")])
    options = FleetOptions(server="http://ota.invalid", provisioning_token="p", work_dir=tmp_path)
    with pytest.raises(FleetSetupError, match="one of: cam-v2, cpu-int8-small"):
        prepare_fleet(options, operator_token="t", api=api)


def test_auto_profile_without_an_operator_token_says_what_to_pass(tmp_path: Path) -> None:
    options = FleetOptions(server="http://ota.invalid", provisioning_token="p", work_dir=tmp_path)
    with pytest.raises(FleetSetupError, match="pass --profile"):
        prepare_fleet(options, operator_token=None)


def test_a_token_without_admin_scope_is_named_with_the_server_message(tmp_path: Path) -> None:
    api = _operator(403, {"error": "this token lacks the admin scope"})
    options = FleetOptions(server="http://ota.invalid", work_dir=tmp_path)
    with pytest.raises(FleetSetupError, match="HTTP 403: this token lacks the admin scope"):
        prepare_fleet(options, operator_token="t", api=api)


def test_an_answer_that_is_not_a_release_list_is_a_setup_error(tmp_path: Path) -> None:
    api = _operator(200, [{"profile": "cam-v2"}])
    options = FleetOptions(server="http://ota.invalid", provisioning_token="p", work_dir=tmp_path)
    with pytest.raises(FleetSetupError, match=r"listing releases: .*lacks the field"):
        prepare_fleet(options, operator_token="t", api=api)
