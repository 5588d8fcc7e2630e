"""Tiny ONNX models and an agent-style commit for the inference service's tests (unit and integration)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ota.core.selftest import save_vectors
from ota.edge.slots import SlotStore
from ota.edge.state import AgentState, InstalledModel, Phase, StateStore
from tests.unit.edge.conftest import build_linear_model


def linear(seed: int, n_in: int = 8, n_out: int = 4) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A seeded ``x @ W + b`` model with a free batch dimension; returns bytes, W and b."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(n_in, n_out)).astype(np.float32)
    bias = rng.normal(size=(n_out,)).astype(np.float32)
    return build_linear_model(weights, bias), weights, bias


def versioned(version: int, n_in: int = 8, n_out: int = 4) -> bytes:
    """A model whose every output is ``version + sum(x) * 0`` (so a response shows which version ran)."""
    weights = np.zeros((n_in, n_out), dtype=np.float32)
    return build_linear_model(weights, np.full((n_out,), float(version), dtype=np.float32))


def slow(layers: int, width: int = 512) -> bytes:
    """A chain of ``layers`` MatMuls by one shared width×width matrix: cost grows with batch and layers."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array((rng.normal(size=(width, width)) / width**0.5).astype(np.float32), "W")
    nodes, previous = [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [previous, "W"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def fixed_batch_of_one() -> bytes:
    """``y = 2x`` for x of shape exactly (1, 8): a model without a free batch dimension."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write_vectors(path: Path, x: np.ndarray, logits: np.ndarray, tolerance: float = 1e-4) -> None:
    """Self-test vectors saying that ``x`` must give ``logits``."""
    save_vectors(
        path,
        inputs=x.astype(np.float32),
        expected_top1=np.argmax(logits, axis=1),
        expected_logits=logits.astype(np.float32),
        tolerance=tolerance,
    )


def commit(
    state_dir: Path,
    slot: str,
    model: bytes,
    version: str,
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
) -> str:
    """Do what the agent does on commit: write the slot's files, then switch ``state.json`` atomically."""
    slots = SlotStore(state_dir)
    slots.ensure_layout()
    slots.model_path(slot).write_bytes(model)  # type: ignore[arg-type]
    vectors_path = slots.vectors_path(slot)  # type: ignore[arg-type]
    if vectors is None:
        vectors_path.unlink(missing_ok=True)
    else:
        write_vectors(vectors_path, *vectors)
    sha = hashlib.sha256(model).hexdigest()
    StateStore(state_dir).save(
        AgentState(
            phase=Phase.COMMITTED,
            active_slot=slot,  # type: ignore[arg-type]
            committed_slot=slot,  # type: ignore[arg-type]
            committed=InstalledModel(
                sha256=sha, length=len(model), version=version, target_name=f"m-{version}.onnx"
            ),
        )
    )
    slots.point_current(slot)  # type: ignore[arg-type]
    return sha
