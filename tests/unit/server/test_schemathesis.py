"""Schemathesis against the OpenAPI schema, in process: bad input to every endpoint never gives a 5xx.

Requests carry an admin token and a device token (for device "fuzz-device"), so generated cases get past
authentication and exercise validation and the handlers themselves. Bounded: a few examples per operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from ota.server.app import create_app
from ota.server.context import build_context
from ota.server.settings import load_settings
from ota.server.testing import SimDevice

from .conftest import make_provisioning, make_token

MAX_EXAMPLES = 12


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home: Path = tmp_path_factory.mktemp("fuzz")
    ctx = build_context(
        load_settings(
            home=home,
            token_secret="fuzz",
            cache_refresh_interval=3600,
            resign_check_interval=3600,
            rollout_tick_interval=3600,
        )
    )
    app = create_app(ctx=ctx)
    with TestClient(app) as client:
        device = SimDevice("fuzz-device")
        assert device.enrol(client, make_provisioning(ctx)).status_code == 201
        device.login(client)
        admin = make_token(ctx, "admin")
        yield {"app": app, "admin": admin, "device_token": device.token}
    ctx.close()


def _operations(fuzz_target: dict[str, Any]) -> list[Any]:
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzz_target["app"])
    return [result.ok() for result in api.get_all_operations()]


def _fuzz(operation: Any, token: str, device_scoped: bool) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def run(case: Any) -> None:
        if device_scoped and case.path_parameters and hash(str(case.path_parameters)) % 2 == 0:
            # Half the cases act as the device the token belongs to, so handlers run past auth.
            case.path_parameters["device_id"] = "fuzz-device"
        response = case.call(headers={"Authorization": f"Bearer {token}"})
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, (operation.label, response.status_code, response.text[:300])

    run()


def test_no_server_errors(fuzz_target: dict[str, Any]) -> None:
    # schemathesis' lazy pytest loader breaks on this pytest version ('Function' has no '_nodeid'), so
    # each operation's strategy is driven through hypothesis directly, with the same bounded settings.
    operations = _operations(fuzz_target)
    assert len(operations) >= 15
    for operation in operations:
        device_scoped = operation.path.startswith("/v1/devices/{device_id}")
        token = fuzz_target["device_token"] if device_scoped else fuzz_target["admin"]
        _fuzz(operation, token, device_scoped)
