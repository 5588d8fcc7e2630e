"""``edgefleet release publish --model-uri models:/NAME@ALIAS`` against a real MLflow store and a live
server: the version is fetched with its lineage and self-test vectors exactly like the release pipeline
(``registry.release_inputs``), then published through the API (issue 15, item 5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from ota.cli import app
from registry.lineage import Lineage
from registry.store import ensure_experiment, register_variant, use_tracking_uri
from tests.integration.server.conftest import LiveServer, live_server, settings_for

MODEL = "edgefleet-digits-cpu-int8-small"
LINEAGE = Lineage(
    git_commit="0123456789abcdef0123456789abcdef01234567",
    git_dirty=False,
    data_fingerprint="sha256:digits-fingerprint",
    config_hash="cfg-hash-1",
    pipeline_run_id="zenml-run-42",
    teacher_model_id="m-teacher0001",
)


def digits_onnx(path: Path) -> Path:
    """A valid ONNX classifier of 8x8 digits: logits = flatten(x) @ W."""
    weights = np.arange(640, dtype=np.float32).reshape(64, 10) / 640
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_tracking_uri(uri)
    experiment = ensure_experiment(uri, "edgefleet-training", artifact_location=(tmp_path / "art").as_uri())
    onnx_path = digits_onnx(tmp_path / "model.onnx")
    with mlflow.start_run(experiment_id=experiment):
        register_variant(
            model_name=MODEL,
            profile="cpu-int8-small",
            variant="student-int8-static",
            onnx_path=onnx_path,
            parent_path=onnx_path,
            metrics={"accuracy": 0.97},
            params={"variant": "student-int8-static", "data_source": "digits"},
            lineage=LINEAGE,
            alias="production",
        )
    use_tracking_uri(before)
    yield uri


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
