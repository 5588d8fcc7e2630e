"""``edgefleet models`` against a remote MLflow tracking server (``mlflow server`` over HTTP), not a file.

The server runs in a subprocess on a copy of the session's template store; the CLI only gets its
``http://`` URI, as it would in production. Promotion, refusal, rollback and ``show`` must behave as on
the embedded SQLite store.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from ota.server.testing import free_port
from registry.cli import models_app
from registry.store import client_for

from .conftest import MODEL, Template

MLFLOW = Path(sys.executable).with_name("mlflow")


@pytest.fixture(scope="module")
def server_uri(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    db = root / "mlflow.db"
    shutil.copyfile(template.db, db)
    port = free_port()
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(
        [
            *(str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{db}"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        start_new_session=True,  # its own process group, so teardown stops the workers it forks too
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def run(uri: str, *args: str) -> Result:
    return CliRunner().invoke(models_app, [*args, "--tracking-uri", uri], env={"COLUMNS": "220"})


def test_promote_refuse_rollback_and_show_over_http(server_uri: str) -> None:
    client = client_for(server_uri)

    def aliases() -> dict[str, str]:
        return {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}

    for version in ("1", "2"):
        result = run(server_uri, "promote", MODEL, version, "--actor", "remote-alice")
        assert result.exit_code == 0, result.output
    assert aliases()["production"] == "2" and aliases()["previous"] == "1"
    assert client.get_model_version(MODEL, "2").tags["edgefleet.promotion.actor"] == "remote-alice"

    refused = run(server_uri, "promote", MODEL, "3")
    assert refused.exit_code == 1 and "min_accuracy" in refused.stdout and "Traceback" not in refused.output
    assert aliases()["production"] == "2"

    back = run(server_uri, "rollback", MODEL, "--reason", "remote drill")
    assert back.exit_code == 0, back.output
    assert aliases()["production"] == "1" and "previous" not in aliases()

    shown = run(server_uri, "show", MODEL, "production")
    assert shown.exit_code == 0, shown.output
    assert "remote drill" in shown.stdout and "model.onnx" in shown.stdout

    missing = run(server_uri, "show", MODEL, "42")
    assert missing.exit_code == 1 and "'42'" in missing.stderr and "Traceback" not in missing.output
