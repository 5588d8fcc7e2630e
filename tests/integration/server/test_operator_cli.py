"""The operator CLI over the HTTP API (issue 15, items 2-5 and 8): a live server on a random, non-default
port, the ``edgefleet`` root command driven through typer's CliRunner (and a subprocess for the commands
that must create nothing in an empty folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from ota.cli import app
from ota.server.testing import SimDevice
from ota.server.testing import write_selftest_vectors as npz
from tests.integration.server.conftest import LiveServer, free_port, live_server, settings_for
from tests.onnx_factory import linear_onnx

REPO = Path(__file__).resolve().parents[3]
Cli = Callable[..., Result]


def onnx_model(path: Path, scale: float, *, features: int = 4) -> Path:
    """A valid ONNX model: logits = flatten(x) @ W, W depending on ``scale``."""
    weights = (np.arange(features * 10, dtype=np.float32).reshape(features, 10) * scale).astype(np.float32)
    path.write_bytes(linear_onnx(weights))
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    # No public_base_url: the URL devices are told must come from the port the server was started on.
    with live_server(settings_for(tmp_path, public_base_url="")) as served:
        assert not served.url.endswith(":8000")
        yield served


@pytest.fixture
def cli(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("EDGEFLEET_SERVER", server.url)
    monkeypatch.setenv("EDGEFLEET_OPERATOR_TOKEN", server.admin_token)
    monkeypatch.delenv("EDGEFLEET_SERVER_URL", raising=False)

    def run(*args: str, ok: bool = True) -> Result:
        result = CliRunner().invoke(app, list(args))
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return run


def test_enrolment_advertises_the_port_the_server_runs_on(server: LiveServer) -> None:
    device = SimDevice("dev-url")
    with server.client() as client:
        answer = device.enrol(client, server.provisioning_token)
    assert answer.status_code == 201, answer.text
    assert answer.json()["metadata_url"] == f"{server.url}/tuf/metadata/"
    assert answer.json()["targets_url"] == f"{server.url}/tuf/targets/"


def test_admission_flow_and_device_filters(server: LiveServer, cli: Cli) -> None:
    manual = cli("tokens", "provisioning", "--name", "line-3").stdout.strip().splitlines()[-1]
    grouped = cli("tokens", "provisioning", "--name", "g", "--group", "north", "--auto-accept")
    grouped_token = grouped.stdout.strip().splitlines()[-1]
    devices = [
        SimDevice("dev-a", profile="cpu-int8-small"),
        SimDevice("dev-b", profile="arm-int8"),
        SimDevice("dev-c", profile="cpu-int8-small", group="north"),
    ]
    with server.client() as client:
        assert devices[0].enrol(client, manual).status_code == 202
        assert devices[1].enrol(client, manual).status_code == 202
        assert devices[2].enrol(client, grouped_token).status_code == 201
    pending = json.loads(cli("devices", "list", "--state", "pending", "--json").stdout)
    assert [d["id"] for d in pending] == ["dev-a", "dev-b"]
    table = cli("devices", "list", "--state", "pending").stdout
    assert "dev-a" in table and "pending" in table
    assert "dev-a: accepted" in cli("devices", "accept", "dev-a", "--reason", "checked").stdout
    assert "dev-b: rejected" in cli("devices", "reject", "dev-b").stdout
    by_profile = json.loads(cli("devices", "list", "--profile", "cpu-int8-small", "--json").stdout)
    assert [d["id"] for d in by_profile] == ["dev-a", "dev-c"]
    by_group = json.loads(cli("devices", "list", "--group", "north", "--json").stdout)
    assert [d["id"] for d in by_group] == ["dev-c"]
    assert json.loads(cli("devices", "list", "--seen-after", "2100-01-01T00:00:00", "--json").stdout) == []
    assert (
        len(json.loads(cli("devices", "list", "--seen-before", "2100-01-01T00:00:00", "--json").stdout)) == 3
    )
    detail = json.loads(cli("devices", "show", "dev-a", "--json").stdout)
    assert detail["device"]["state"] == "accepted" and detail["installed_release"] is None
    assert "dev-c: revoked" in cli("devices", "revoke", "dev-c").stdout
    missing = cli("devices", "show", "nope", ok=False)
    assert missing.exit_code == 1 and "no device 'nope'" in missing.output
    # Keyset paging through the client returns every device once.
    from ota.client.api import OperatorClient

    with OperatorClient(base_url=server.url, token=server.admin_token) as api:
        assert [d.id for d in api.devices(page_size=1)] == ["dev-a", "dev-b", "dev-c"]


def test_tokens_over_the_api(cli: Cli) -> None:
    created = cli("tokens", "create", "--name", "ci", "--scope", "read").stdout.strip()
    assert created.startswith("efo_")
    listed = json.loads(cli("tokens", "list", "--json").stdout)
    ci = next(t for t in listed["operator"] if t["name"] == "ci")
    assert ci["scopes"] == ["read"] and ci["id"] in cli("tokens", "list").stdout
    assert f"revoked {ci['id']}" in cli("tokens", "revoke", ci["id"]).stdout
    os.environ["EDGEFLEET_OPERATOR_TOKEN"] = created
    refused = cli("release", "list", ok=False)
    assert refused.exit_code == 1 and "401" in refused.output


def test_release_and_rollout_over_the_api(server: LiveServer, cli: Cli, tmp_path: Path) -> None:
    artifact = onnx_model(tmp_path / "m.onnx", 1.0)
    args = [
        "release",
        "publish",
        "--artifact",
        str(artifact),
        "--model",
        "m",
        "--version",
        "1",
        "--profile",
        "cpu",
    ]
    first = cli(*args, "--selftest", str(npz(tmp_path / "v.npz", b"vectors")))
    assert "published rel-" in first.stdout and "self-test vectors: m-1-cpu.selftest.npz" in first.stdout
    assert "already published" in cli(*args, "--selftest", str(tmp_path / "v.npz")).stdout
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"not onnx" * 50)
    raw_args = [
        "release",
        "publish",
        "--artifact",
        str(raw),
        "--model",
        "r",
        "--version",
        "1",
        "--profile",
        "cpu",
    ]
    refused = cli(*raw_args, ok=False)
    assert refused.exit_code == 1 and "422" in refused.output
    assert "published" in cli(*raw_args, "--allow-non-onnx").stdout
    releases = json.loads(cli("release", "list", "--json").stdout)
    release_id = next(r["id"] for r in releases if r["model"] == "m")
    assert release_id in cli("release", "list").stdout  # whole, not cut
    shown = json.loads(cli("release", "show", release_id, "--json").stdout)
    assert shown["release"]["selftest_target"] == "m-1-cpu.selftest.npz"
    assert "started ro-" in cli("rollout", "start", "--release", release_id, "--phases", "10,100").stdout
    rollouts = json.loads(cli("rollout", "list", "--json").stdout)
    rollout_id = rollouts[0]["id"]
    status = json.loads(cli("rollout", "status", rollout_id, "--json").stdout)[0]
    assert status["state"] == "running" and status["phases"] == [10.0, 100.0]
    assert status["saved_bytes"] == 0 and status["overhead_bytes"] == 0 and status["saved_fraction"] == 0.0
    assert "saved 0 B" in cli("rollout", "status").stdout
    assert "paused" in cli("rollout", "pause", rollout_id).stdout
    again = cli("rollout", "pause", rollout_id, ok=False)
    assert again.exit_code == 1 and "cannot pause" in again.output
    assert "running" in cli("rollout", "resume", rollout_id).stdout
    assert "aborted" in cli("rollout", "abort", rollout_id).stdout


READ_ONLY = [
    ["release", "list"],
    ["release", "show", "rel-x"],
    ["rollout", "status"],
    ["rollout", "list"],
    ["devices", "list", "--state", "pending"],
    ["devices", "show", "dev-x"],
    ["tokens", "list"],
    ["trace", "dev-x"],
]


@pytest.mark.parametrize("with_token", [False, True])
def test_read_only_commands_create_nothing(tmp_path: Path, with_token: bool) -> None:
    """In an empty folder, with no server: exit 1, one line naming the URL and the variable, no state."""
    folder = tmp_path / "empty"
    folder.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "MLFLOW_"))}
    env |= {"PYTHONPATH": str(REPO), "EDGEFLEET_SERVER": dead}
    if with_token:
        env["EDGEFLEET_OPERATOR_TOKEN"] = "efo_x_y"
    script = "import sys; from ota.cli import app; sys.argv[0] = 'edgefleet'; app()"
    for args in READ_ONLY:
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        message = done.stderr.strip()
        assert done.returncode == 1, (args, done.stdout, message)
        assert message.startswith("error:") and len(message.splitlines()) == 1, (args, message)
        if args[0] == "trace":
            assert "no MLflow store" in message and "MLFLOW_TRACKING_URI" in message
        elif with_token:
            assert dead in message and "EDGEFLEET_SERVER" in message, message
        else:
            assert "EDGEFLEET_OPERATOR_TOKEN" in message and dead in message, message
        assert list(folder.iterdir()) == [], (args, list(folder.iterdir()))


def test_re_enrolment_repairs_a_wrong_stored_url(tmp_path: Path) -> None:
    """A device enrolled while the server advertised a wrong URL gets the right one by enrolling again
    once the server is fixed (same id and key; its admission state is kept)."""
    port = free_port()
    device = SimDevice("dev-moved")
    wrong = settings_for(tmp_path, port=port, public_base_url="http://127.0.0.1:8000")
    assert wrong.public_url_mismatch() is not None  # `server run` logs this at start
    with live_server(wrong) as served, served.client() as client:
        first = device.enrol(client, served.provisioning_token)
        token = served.provisioning_token
    assert first.json()["metadata_url"] == "http://127.0.0.1:8000/tuf/metadata/"
    with (
        live_server(settings_for(tmp_path, port=port, public_base_url="")) as served,
        served.client() as client,
    ):
        again = device.enrol(client, token)
    assert again.status_code == 201, again.text
    assert again.json()["metadata_url"] == f"http://127.0.0.1:{port}/tuf/metadata/"
