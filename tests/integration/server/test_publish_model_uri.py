"""``edgefleet release publish --model-uri models:/NAME@ALIAS`` against a real MLflow store and a live
server: the version is fetched with its lineage and self-test vectors exactly like the release pipeline
(``registry.release_inputs``), then published through the API (issue 15, item 5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ota.cli import app
from tests.integration.registered_model import LINEAGE, MODEL, register_production_version
from tests.integration.server.conftest import LiveServer, live_server, settings_for


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return register_production_version(tmp_path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(settings_for(tmp_path, public_base_url="")) as served:
        yield served


def test_publish_model_uri_like_the_pipeline(
    server: LiveServer, mlflow_store: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGEFLEET_SERVER", server.url)
    monkeypatch.setenv("EDGEFLEET_OPERATOR_TOKEN", server.admin_token)
    monkeypatch.chdir(tmp_path)
    args = [
        "release",
        "publish",
        "--model-uri",
        f"models:/{MODEL}@production",
        "--tracking-uri",
        mlflow_store,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "published rel-" in result.stdout
    assert f"self-test vectors: {MODEL}-1-cpu-int8-small.selftest.npz" in result.stdout
    with server.client() as client:
        (release,) = client.get("/v1/releases", headers=server.admin).json()
    assert (release["model"], release["version"], release["profile"]) == (MODEL, "1", "cpu-int8-small")
    assert release["data_fingerprint"] == LINEAGE.data_fingerprint and release["mlflow_run_id"]
    assert release["source_uri"].startswith(f"models:/{MODEL}/1?run_id=")
    # Publishing the same alias again is idempotent; an alias that does not exist fails clearly.
    assert "already published" in CliRunner().invoke(app, args).stdout
    missing = CliRunner().invoke(app, [*args[:3], f"models:/{MODEL}@nope", *args[4:]])
    assert missing.exit_code == 1 and "nope" in missing.output
    # Nothing was written into the working folder (the fetch used a temporary one).
    assert (
        list(tmp_path.glob("*.onnx")) == [tmp_path / "model.onnx"] and not (tmp_path / ".edgefleet").exists()
    )
