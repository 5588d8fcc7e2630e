"""Shared helpers for the delta engine's unit tests: tiny ONNX models built with onnx.helper (no torch).

onnx is a test dependency here; ``ota.core.delta`` itself never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper


def build_model(
    tensors: dict[str, np.ndarray], *, doc: str = "", props: dict[str, str] | None = None
) -> bytes:
    """Serialise an ONNX model whose graph holds ``tensors`` as initializers (plus a Constant node)."""
    initializers = [numpy_helper.from_array(array, name) for name, array in tensors.items()]
    constant = helper.make_node(
        "Constant",
        [],
        ["c"],
        value=numpy_helper.from_array(np.arange(300, dtype=np.float32), "const"),
    )
    graph = helper.make_graph(
        [constant, helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=initializers,
    )
    model = helper.make_model(graph, doc_string=doc)
    if props:
        helper.set_model_props(model, props)
    return model.SerializeToString()


def sample_tensors(seed: int = 0, *, big: bool = False) -> dict[str, np.ndarray]:
    """A few tensors of the dtypes models carry; with ``big``, one spans several chunks of apply."""
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": (rng.standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32),
        "fc.weight": (rng.standard_normal((600, 500) if big else (40, 50)) * 0.05).astype(np.float32),
        "fc.bias": (rng.standard_normal(10) * 0.01).astype(np.float32),
        "q.weight": rng.integers(-128, 128, 5000, dtype=np.int8),
        "q.bias": rng.integers(-(2**20), 2**20, 600, dtype=np.int32),
        "half": rng.standard_normal(700).astype(np.float16),
        "shape": np.array([1, -1], dtype=np.int64),
    }


def _pair(folder: Path, *, big: bool) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    base = sample_tensors(big=big)
    new = {}
    for name, array in base.items():
        if array.dtype == np.float32:
            new[name] = (array + rng.standard_normal(array.shape).astype(np.float32) * 1e-4).astype(
                np.float32
            )
        elif array.dtype == np.int8:
            new[name] = np.clip(array.astype(np.int16) + rng.integers(-1, 2, array.shape), -128, 127).astype(
                np.int8
            )
        else:
            new[name] = array
    old_path, new_path = folder / "old.onnx", folder / "new.onnx"
    old_path.write_bytes(build_model(base))
    new_path.write_bytes(build_model(new))
    return old_path, new_path


@pytest.fixture
def model_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A base model and a fine-tuned version (every float weight moved a little, int8 weights by ±1).

    The biggest tensor spans several chunks, so apply's chunking is exercised.
    """
    return _pair(tmp_path, big=True)


@pytest.fixture(scope="session")
def small_patch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A small fine-tuned pair and its patch, made once: (old, new, patch). Tests must not modify them."""
    folder = tmp_path_factory.mktemp("small-pair")
    old, new = _pair(folder, big=False)
    patch = folder / "p.efd"
    from ota.core.delta import make_delta

    make_delta(old, new, patch)
    return old, new, patch


@pytest.fixture(scope="session")
def onnx_model() -> Callable[..., bytes]:
    """The model builder, as a fixture (test modules cannot import each other under importlib mode)."""
    return build_model


@pytest.fixture(scope="session")
def tensors() -> Callable[[int], dict[str, np.ndarray]]:
    """The sample tensor factory, as a fixture."""
    return sample_tensors
