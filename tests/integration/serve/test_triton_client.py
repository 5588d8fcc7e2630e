"""Interop with a client we did not write: tritonclient's InferenceServerClient against `edgefleet serve`."""

from __future__ import annotations

import httpx
import numpy as np
import onnxruntime as ort
import tritonclient.http as triton

from ota.serve.testing import run_service
from tests.unit.serve.models import linear, write_vectors


def test_tritonclient_reads_health_metadata_and_infers_like_onnx_runtime(tmp_path):
    data, _, _ = linear(5)
    model = tmp_path / "model.onnx"
    model.write_bytes(data)
    direct = ort.InferenceSession(data)
    vectors = tmp_path / "selftest.npz"
    probe = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    write_vectors(vectors, probe, direct.run(None, {"x": probe})[0])
    with run_service(
        ["--model", str(model), "--vectors", str(vectors), "--name", "digits", "--max-batch-size", "8"],
        log=tmp_path / "serve.log",
    ) as service:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{service.port}")
        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready("digits")
            assert not client.is_model_ready("nope")
            assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
            meta = client.get_model_metadata("digits")
            assert meta["versions"] == ["1"]
            assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
            assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
            x = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
            expected = direct.run(None, {"x": x})[0]
            for binary_in in (True, False):
                for binary_out in (True, False):
                    tensor = triton.InferInput("x", list(x.shape), "FP32")
                    tensor.set_data_from_numpy(x, binary_data=binary_in)
                    wanted = [triton.InferRequestedOutput("logits", binary_data=binary_out)]
                    result = client.infer("digits", [tensor], outputs=wanted, request_id="r7")
                    np.testing.assert_array_equal(result.as_numpy("logits"), expected)
                    response = result.get_response()
                    assert (response["model_version"], response["id"]) == ("1", "r7")
            # No outputs named: tritonclient asks for binary outputs of all of them.
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("digits", [tensor]).as_numpy("logits"), expected)
            # A protocol error reaches the client as its own exception, with our message.
            wrong = triton.InferInput("x", [1, 3], "FP32")
            wrong.set_data_from_numpy(np.zeros((1, 3), np.float32))
            try:
                client.infer("digits", [wrong])
            except triton.InferenceServerException as exc:
                assert "the model takes [-1, 8]" in exc.message()
            else:
                raise AssertionError("a wrong shape was accepted")
            stats = httpx.get(f"{service.url}/metrics").text  # /metrics is not in tritonclient's API
            assert 'edgefleet_serve_model_loaded{model="digits",sha256=' in stats
        finally:
            client.close()
