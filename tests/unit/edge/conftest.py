"""Shared fixtures for the edge agent's unit tests: tiny ONNX models built with onnx.helper.

onnx is available in the dev venv for tests; only ``ota.edge`` itself must never import it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.onnx_factory import linear_onnx


def build_linear_model(weights: np.ndarray, bias: np.ndarray, *, opset: int = 17) -> bytes:
    """Return an ONNX model computing ``x @ weights + bias`` for x of shape (batch, in)."""
    return linear_onnx(
        weights, bias=bias, input_shape=["batch", weights.shape[0]], opset=opset, name="linear"
    )


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
