"""The HTTP endpoints in process (Starlette's TestClient): readiness, protocol errors, limits."""

from __future__ import annotations

import numpy as np
from starlette.testclient import TestClient

from ota.serve.app import build_app
from ota.serve.config import BatchingConfig, ServeConfig
from ota.serve.source import AgentStateSource
from tests.unit.serve.models import commit, versioned

BODY = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}


def config(**changes) -> ServeConfig:
    settings = {"model_name": "m", "batching": BatchingConfig(max_batch_size=4), "watch_interval_s": 0.01}
    return ServeConfig(**{**settings, **changes})


def test_live_before_ready_then_ready_after_the_first_commit(tmp_path):
    app = build_app(AgentStateSource(tmp_path), config())
    with TestClient(app) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        answer = client.post("/v2/models/m/infer", json=BODY)
        assert answer.status_code == 503 and "not ready" in answer.json()["error"]
        commit(tmp_path, "a", versioned(4), "4.0")
        loaded = client.post("/v2/repository/models/m/load")
        assert loaded.json() == {"name": "m", "version": "4.0"}
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/models/m/versions/4.0/ready").status_code == 200
        answer = client.post("/v2/models/m/versions/4.0/infer", json=BODY)
        assert answer.json()["outputs"][0]["data"] == [4.0] * 4
        assert client.get("/v2/models/m/versions/3.0").status_code == 404
        assert client.get("/v2/models/other").json()["error"].startswith("no model named 'other'")
        assert client.post("/v2/models/other/infer", json=BODY).status_code == 404
        assert client.post("/v2/models/m/infer", content=b"{oops").status_code == 400
        metrics = client.get("/metrics").text
    assert 'edgefleet_serve_request_failure_total{model="m",reason="not_ready"} 1.0' in metrics
    assert 'edgefleet_serve_request_failure_total{model="m",reason="bad_request"} 1.0' in metrics
    assert 'edgefleet_serve_request_success_total{model="m"} 1.0' in metrics


def test_a_body_over_the_limit_is_refused_with_413(tmp_path):
    commit(tmp_path, "a", versioned(1), "1")
    app = build_app(AgentStateSource(tmp_path), config(max_request_bytes=1000))
    with TestClient(app) as client:
        client.post("/v2/repository/models/m/load")
        big = {"inputs": [{"name": "x", "shape": [4, 8], "datatype": "FP32", "data": np.ones(32).tolist()}]}
        assert client.post("/v2/models/m/infer", json=big).status_code == 200
        huge = {"inputs": [{"name": "x", "shape": [400, 8], "datatype": "FP32", "data": [0.5] * 3200}]}
        answer = client.post("/v2/models/m/infer", json=huge)
    assert answer.status_code == 413 and "more than 1000" in answer.json()["error"]


def test_a_failed_load_answers_400_and_keeps_serving(tmp_path):
    commit(tmp_path, "a", versioned(1), "1")
    app = build_app(AgentStateSource(tmp_path), config(watch_interval_s=60))
    with TestClient(app) as client:
        client.post("/v2/repository/models/m/load")
        commit(tmp_path, "b", b"not onnx", "2")
        answer = client.post("/v2/repository/models/m/load")
        assert answer.status_code == 400 and "version 2: load:" in answer.json()["error"]
        meta = client.get("/v2/models/m").json()
    assert meta["versions"] == ["1"] and "version 2" in meta["parameters"]["last_load_error"]
