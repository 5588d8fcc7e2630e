"""Fast checks of the release/demo building blocks that need no server, pipeline or MLflow store:
provenance URIs, the demo's derived configs, the broken model's graft and the rollout body."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ml.errors import ExportError
from ml.slow_model import make_slow_model
from registry.fetch import VersionFacts
from registry.trace import TraceError, parse_source_uri, release_source_uri
from steps.release_config import ReleasePipelineConfig
from steps.release_rollout import rollout_body
from tests.onnx_factory import linear_onnx


def _facts(name: str = "edgefleet-digits-cpu-int8-small", version: str = "7") -> VersionFacts:
    return VersionFacts(
        name=name,
        version=version,
        model_uri=f"models:/{name}/{version}",
        run_id="0123abcd",
        model_id="m-1",
        profile="cpu-int8-small",
        sha256="ab" * 32,
        aliases=("production",),
        lineage={"data_fingerprint": "f" * 64},
    )


def test_source_uri_round_trips_provenance() -> None:
    ref = parse_source_uri(release_source_uri(_facts()))
    assert (ref.name, ref.version, ref.run_id, ref.data_fingerprint) == (
        "edgefleet-digits-cpu-int8-small",
        "7",
        "0123abcd",
        "f" * 64,
    )
    assert ref.model_uri == "models:/edgefleet-digits-cpu-int8-small/7"


@pytest.mark.parametrize(
    "uri",
    ["", "s3://bucket/model.onnx", "models:/only-a-name", "models:/name/production", "models:/name/"],
)
def test_source_uri_refuses_what_is_not_a_version(uri: str) -> None:
    with pytest.raises(TraceError):
        parse_source_uri(uri)


def test_plain_source_uri_without_provenance_still_names_the_version() -> None:
    ref = parse_source_uri("models:/m/3")
    assert (ref.name, ref.version, ref.run_id, ref.data_fingerprint) == ("m", "3", None, None)


def _tiny_model(path: Path) -> None:
    weights = np.arange(64 * 10, dtype=np.float32).reshape(64, 10) / 640
    path.write_bytes(linear_onnx(weights, input_shape=["batch", 1, 8, 8], name="tiny"))


def test_slow_graft_keeps_the_logits_and_adds_work(tmp_path: Path) -> None:
    _tiny_model(tmp_path / "fast.onnx")
    make_slow_model(tmp_path / "fast.onnx", tmp_path / "slow.onnx", matmuls=3, size=64)
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    fast = ort.InferenceSession(str(tmp_path / "fast.onnx"), providers=["CPUExecutionProvider"])
    slow = ort.InferenceSession(str(tmp_path / "slow.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(fast.run(None, {"x": x})[0], slow.run(None, {"x": x})[0])
    ops = [node.op_type for node in onnx.load(str(tmp_path / "slow.onnx")).graph.node]
    assert ops.count("MatMul") == 1 + 3


def test_slow_graft_refuses_models_with_several_outputs(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Identity", ["x"], ["b"])],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("a", "b")],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "two.onnx"))
    with pytest.raises(ExportError, match="one input and one output"):
        make_slow_model(tmp_path / "two.onnx", tmp_path / "out.onnx", matmuls=1)


def test_rollout_body_carries_phases_and_abort_rule() -> None:
    config = ReleasePipelineConfig.model_validate(
        {
            "rollout": {
                "phases": [{"percent": 25, "min_reports": 1}, {"percent": 100}],
                "failure_threshold": 0.3,
                "min_reports_for_abort": 4,
            }
        }
    )
    body = rollout_body("rel-1", config)
    assert body["release_id"] == "rel-1"
    assert [p["percent"] for p in body["phases"]] == [25, 100]
    assert body["phases"][0]["min_reports"] == 1
    assert (body["failure_threshold"], body["min_reports_for_abort"], body["abort_action"]) == (
        0.3,
        4,
        "abort",
    )


def test_release_config_refuses_unknown_keys_and_bad_thresholds() -> None:
    with pytest.raises(ValueError):
        ReleasePipelineConfig.model_validate({"rollout": {"failure_threshold": 2}})
    with pytest.raises(ValueError):
        ReleasePipelineConfig.model_validate({"operator_token": "nope"})


def test_selftest_inputs_have_the_training_preprocessing() -> None:
    """A BYOM model trained at data.input_size gets vectors of that size (the digits are 1×8×8 raw)."""
    from ml.config import DataConfig
    from registry.release_inputs import selftest_inputs

    raw = selftest_inputs(DataConfig(source="digits"), 4)
    resized = selftest_inputs(DataConfig(source="digits", input_size=(3, 16, 16)), 4)
    assert raw.shape == (4, 1, 8, 8)
    assert resized.shape == (4, 3, 16, 16) and resized.dtype == np.float32


def test_the_release_pipeline_rollout_defaults_are_the_servers() -> None:
    from ota.server.schemas import RolloutCreate
    from steps.release_config import RolloutConfig

    pipeline = RolloutConfig()
    server = RolloutCreate.model_fields
    assert pipeline.failure_threshold == server["failure_threshold"].default
    assert pipeline.min_reports_for_abort == server["min_reports_for_abort"].default
    assert [phase.percent for phase in pipeline.phases] == [1.0, 10.0, 50.0, 100.0]
