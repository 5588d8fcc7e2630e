"""A deliberately slow copy of an ONNX model: same outputs, much higher latency.

The ``make run`` demo registers one as its broken third version, to show the fleet-side latency check
abort a rollout; tests use it to make a model that fails a latency budget without changing its answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ml.errors import ExportError
from ml.files import write_atomic


def make_slow_model(source: Path, destination: Path, *, matmuls: int, size: int = 1024) -> None:
    """Graft a slow branch onto ``source``: logits + 0·Σ(chain of ``matmuls`` size×size MatMuls of the input).

    The outputs are unchanged (the branch is multiplied by zero at run time, which ONNX Runtime does not
    fold away because it depends on the input), so only the latency tells the models apart.

    Raises:
        ExportError: The source has not exactly one input and one output.
        OSError: ``destination`` cannot be written.
    """
    model = onnx.load(str(source))
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f"{source} must have one input and one output to be made slow")
    x, y = graph.input[0].name, graph.output[0].name
    renamed = f"{y}__fast"
    for node in graph.node:
        node.output[:] = [renamed if out == y else out for out in node.output]
    weights = np.full((size, size), 1.0 / size, dtype=np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array(weights, "slow_w"),
            numpy_helper.from_array(np.array([size, size], dtype=np.int64), "slow_shape"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "slow_zero"),
        ]
    )
    nodes = [
        helper.make_node("ReduceSum", [x], ["slow_s"], keepdims=0),
        helper.make_node("Expand", ["slow_s", "slow_shape"], ["slow_m0"]),
    ]
    for index in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"slow_m{index}", "slow_w"], [f"slow_m{index + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_m{matmuls}"], ["slow_total"], keepdims=0),
        helper.make_node("Mul", ["slow_total", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", [renamed, "slow_nothing"], [y]),
    ]
    graph.node.extend(nodes)
    del graph.value_info[:]  # shapes of renamed tensors are re-inferred by ORT
    onnx.checker.check_model(model)
    write_atomic(destination, model.SerializeToString())
