"""The protobuf walker finds every tensor's raw_data at the exact byte offsets onnx itself reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ota.core.delta.errors import OnnxLayoutError
from ota.core.delta.onnx_layout import parse_onnx_layout


def test_spans_match_onnx_raw_data(
    onnx_model: Callable[..., bytes], tensors: Callable[..., dict[str, np.ndarray]]
) -> None:
    data = onnx_model(tensors(0))
    layout = parse_onnx_layout(data)
    model = onnx.load_from_string(data)
    expected = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    found = {span.name: span for span in layout.tensors}
    assert set(expected) <= set(found)
    for name, array in expected.items():
        span = found[name]
        assert data[span.offset : span.offset + span.length] == array.tobytes()
        assert span.dims == array.shape
        assert span.itemsize == array.dtype.itemsize
    # The Constant node's tensor (an attribute) is found too.
    assert (
        data[found["const"].offset : found["const"].offset + 1200]
        == np.arange(300, dtype=np.float32).tobytes()
    )
    offsets = [span.offset for span in layout.tensors]
    assert offsets == sorted(offsets)


def test_external_data_references_are_listed(
    tmp_path: Path, onnx_model: Callable[..., bytes], tensors: Callable[..., dict[str, np.ndarray]]
) -> None:
    model = onnx.load_from_string(onnx_model(tensors(0)))
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    layout = parse_onnx_layout(path.read_bytes())
    names = {ext.name for ext in layout.external}
    assert "fc.weight" in names
    assert all(ext.location == "m.onnx.data" for ext in layout.external)


@pytest.mark.parametrize("data", [b"", b"\x00\x01\x02", b"hello world, not a model", bytes(range(256)) * 4])
def test_non_onnx_bytes_raise(data: bytes) -> None:
    with pytest.raises(OnnxLayoutError):
        parse_onnx_layout(data)
