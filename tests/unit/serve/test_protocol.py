"""The Open Inference Protocol's request decoding and response encoding, JSON and binary tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ota.serve.errors import ProtocolError
from ota.serve.model import ModelCandidate, load_model
from ota.serve.protocol import decode_request, encode_response
from tests.unit.serve.models import linear


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(linear(1)[0])
    return load_model(ModelCandidate(key="k", path=path, version="7"), name="m")


def binary_body(x: np.ndarray, **parameters) -> tuple[bytes, str]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": parameters,
        }
    ).encode()
    return header + x.tobytes(), str(len(header))


def test_json_and_binary_requests_decode_to_the_same_array(model):
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    nested = json.dumps(
        {"id": "r1", "inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": x.tolist()}]}
    )
    as_json = decode_request(nested.encode(), None, model, max_batch_size=4)
    body, length = binary_body(x, timeout=250_000)
    as_binary = decode_request(body, length, model, max_batch_size=4)
    np.testing.assert_array_equal(as_json.inputs["x"], x)
    np.testing.assert_array_equal(as_binary.inputs["x"], x)
    assert (as_json.rows, as_json.id, as_json.outputs) == (2, "r1", [("logits", False)])
    assert as_binary.timeout_s == 0.25


def test_binary_outputs_follow_the_request(model):
    x = np.ones((1, 8), np.float32)
    body, length = binary_body(x, binary_data_output=True)
    request = decode_request(body, length, model, max_batch_size=4)
    out = model.run(request.inputs)
    payload, headers = encode_response(request, model, out)
    split = int(headers["inference-header-content-length"])
    header = json.loads(payload[:split])
    assert header["model_version"] == "7"
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 16
    np.testing.assert_array_equal(np.frombuffer(payload[split:], np.float32).reshape(1, 4), out[0])
    as_json = decode_request(
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [1] * 8}]}
        ).encode(),
        None,
        model,
        max_batch_size=4,
    )
    payload, headers = encode_response(as_json, model, out)
    assert headers == {"content-type": "application/json"}
    np.testing.assert_array_equal(
        np.asarray(json.loads(payload)["outputs"][0]["data"], np.float32), out[0].ravel()
    )


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "y", "shape": [1, 8], "datatype": "FP32", "data": [0] * 8}, "unknown input"),
        ({"name": "x", "shape": [1, 8], "datatype": "INT64", "data": [0] * 8}, "datatype"),
        ({"name": "x", "shape": [1, 9], "datatype": "FP32", "data": [0] * 9}, "shape"),
        ({"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0] * 7}, "7 values"),
        ({"name": "x", "shape": [1, 8], "datatype": "FP32", "data": ["a"] * 8}, "not FP32"),
        ({"name": "x", "shape": [1, 8], "datatype": "FP32"}, "neither"),
        ({"name": "x", "shape": [9, 8], "datatype": "FP32", "data": [0] * 72}, "1 to 4 rows"),
        ({"name": "x", "shape": "1,8", "datatype": "FP32", "data": [0] * 8}, "non-negative integers"),
    ],
)
def test_bad_json_requests_say_what_is_wrong(model, tensor, message):
    with pytest.raises(ProtocolError, match=message):
        decode_request(json.dumps({"inputs": [tensor]}).encode(), None, model, max_batch_size=4)


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"{", None, "not valid JSON"),
        (b"[]", None, "must be a JSON object"),
        (b'{"inputs": []}', None, "non-empty"),
        (b'{"inputs": [{"name": "x"}]}', "999", "does not fit"),
        (b'{"inputs": [{"name": "x"}]}', "abc", "integer"),
    ],
)
def test_malformed_bodies_are_protocol_errors(model, body, length, message):
    with pytest.raises(ProtocolError, match=message):
        decode_request(body, length, model, max_batch_size=4)


def test_binary_sizes_must_match_the_shape_and_the_body(model):
    x = np.ones((1, 8), np.float32)
    body, length = binary_body(x)
    with pytest.raises(ProtocolError, match="runs past the body"):
        decode_request(body[:-4], length, model, max_batch_size=4)
    with pytest.raises(ProtocolError, match="not claimed"):
        decode_request(body + b"\0\0\0\0", length, model, max_batch_size=4)
    wrong = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 7], "datatype": "FP32", "parameters": {"binary_data_size": 32}}
            ]
        }
    ).encode()
    with pytest.raises(ProtocolError, match="shape"):
        decode_request(wrong + x.tobytes(), str(len(wrong)), model, max_batch_size=4)
