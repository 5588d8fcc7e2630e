"""The one tiny-ONNX factory of the tests: a valid linear classifier, ``logits = flatten(x) @ W (+ b)``.

Every test that needs "some real ONNX model" (to publish, install, run in ONNX Runtime, register) builds it
here, so a change of opset or IR version happens in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear_onnx(
    weights: np.ndarray,
    *,
    bias: np.ndarray | None = None,
    input_shape: Sequence[int | str] | None = None,
    opset: int = 17,
    name: str = "g",
) -> bytes:
    """A checked ONNX model computing ``flatten(x) @ weights (+ bias)``; IR version 8.

    Args:
        weights: ``(inputs, classes)`` float32 matrix.
        bias: Optional ``(classes,)`` vector, added after the MatMul.
        input_shape: The input's shape, ``[1, inputs]`` by default; a leading ``"batch"`` makes the batch
            dynamic, and more than two dimensions put a ``Flatten`` first (``[1, 1, 8, 8]`` for 8×8 digits).
        opset: The default domain's opset.
        name: The graph's name.
    """
    n_in, n_out = weights.shape
    shape = list(input_shape) if input_shape is not None else [1, n_in]
    nodes, source = [], "x"
    if len(shape) > 2:
        nodes.append(helper.make_node("Flatten", ["x"], ["flat"]))
        source = "flat"
    initializers = [numpy_helper.from_array(weights.astype(np.float32), "W")]
    if bias is None:
        nodes.append(helper.make_node("MatMul", [source, "W"], ["logits"]))
    else:
        nodes.append(helper.make_node("MatMul", [source, "W"], ["xw"]))
        nodes.append(helper.make_node("Add", ["xw", "b"], ["logits"]))
        initializers.append(numpy_helper.from_array(bias.astype(np.float32), "b"))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], n_out])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
