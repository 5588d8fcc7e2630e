"""`edgefleet serve --model-uri models:/NAME@production` with the pipeline extra (a real MLflow store)."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort

from ota.serve.testing import run_service
from tests.integration.registered_model import MODEL, register_production_version


def test_serves_a_registry_version_and_names_its_mlflow_version(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = register_production_version(tmp_path / "store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
    with (
        run_service(
            ["--model-uri", f"models:/{MODEL}@production", "--name", "digits"], log=tmp_path / "serve.log"
        ) as service,
        httpx.Client(base_url=service.url, timeout=10) as http,
    ):
        meta = http.get("/v2/models/digits").json()
        answers = [http.post("/v2/models/digits/infer", json=body).json() for _ in range(3)]
    assert meta["versions"] == ["1"]
    assert meta["parameters"]["mlflow_version"] == "1"
    assert meta["parameters"]["model_uri"] == f"models:/{MODEL}@production"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 1, 8, 8]}]  # no batch dimension
    fetched = next((tmp_path / "store").rglob("model.onnx"))
    expected = ort.InferenceSession(str(fetched)).run(None, {"x": x})[0]
    for answer in answers:
        assert answer["model_version"] == "1"
        np.testing.assert_array_equal(np.asarray(answer["outputs"][0]["data"], np.float32), expected.ravel())
