"""Shared fixtures for the edge agent's unit tests: tiny ONNX models built with onnx.helper.

onnx is available in the dev venv for tests; only ``ota.edge`` itself must never import it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def build_linear_model(weights: np.ndarray, bias: np.ndarray, *, opset: int = 17) -> bytes:
    """Return an ONNX model computing ``x @ weights + bias`` for x of shape (batch, in)."""
    n_in, n_out = weights.shape
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def linear_model(tmp_path: Path) -> Callable[[int], tuple[Path, np.ndarray, np.ndarray]]:
    """Factory: write a seeded 8→4 linear model; return its path, weights and bias."""

    def make(seed: int) -> tuple[Path, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        weights = rng.normal(size=(8, 4)).astype(np.float32)
        bias = rng.normal(size=(4,)).astype(np.float32)
        path = tmp_path / f"model-{seed}.onnx"
        path.write_bytes(build_linear_model(weights, bias))
        return path, weights, bias

    return make
