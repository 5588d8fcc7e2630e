"""Find where the tensors of a serialized ONNX model lie, by walking the protobuf wire format on its bytes.

Part of ``ota.core.delta``'s make path. The delta engine needs the exact byte range of each tensor's
``raw_data`` inside the file (the rest is the "skeleton"), which the ``onnx`` package does not expose: it
parses into objects and forgets offsets. Walking the wire format is a few dozen lines, needs no ``onnx``
import (so the server and agent stay light), and reads only field keys and lengths: a 45 MB model is walked
in milliseconds.

Fields used (onnx/onnx.proto3): ModelProto.graph = 7; GraphProto.node = 1, initializer = 5;
NodeProto.attribute = 5; AttributeProto.t = 5, g = 6, tensors = 10, graphs = 11; TensorProto.dims = 1,
data_type = 2, name = 8, raw_data = 9, external_data = 13, data_location = 14;
StringStringEntryProto.key = 1, value = 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ota.core.delta.errors import OnnxLayoutError

# TensorProto.DataType -> bytes per element for the types whose raw_data is a flat little-endian array.
# Strings, complex and 4-bit types are left to the skeleton (generic compression).
ONNX_ITEMSIZE: dict[int, int] = {
    1: 4,  # FLOAT
    2: 1,  # UINT8
    3: 1,  # INT8
    4: 2,  # UINT16
    5: 2,  # INT16
    6: 4,  # INT32
    7: 8,  # INT64
    9: 1,  # BOOL
    10: 2,  # FLOAT16
    11: 8,  # DOUBLE
    12: 4,  # UINT32
    13: 8,  # UINT64
    16: 2,  # BFLOAT16
    17: 1,  # FLOAT8E4M3FN
    18: 1,  # FLOAT8E4M3FNUZ
    19: 1,  # FLOAT8E5M2
    20: 1,  # FLOAT8E5M2FNUZ
}

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# Graphs nest through If/Loop/Scan attributes; a model nested deeper than this is hostile, not real.
_MAX_DEPTH = 32


@dataclass(frozen=True)
class TensorSpan:
    """One tensor's data inside a file.

    Attributes:
        name: Tensor name (``@N`` for unnamed tensors, N being their order in the file).
        data_type: ONNX ``TensorProto.DataType`` value.
        dims: Shape.
        offset: Byte offset of the data in the file it lives in.
        length: Byte length of the data.
        itemsize: Bytes per element.
    """

    name: str
    data_type: int
    dims: tuple[int, ...]
    offset: int
    length: int
    itemsize: int


@dataclass(frozen=True)
class ExternalTensor:
    """A tensor whose data lives in an external file (``data_location == EXTERNAL``)."""

    name: str
    data_type: int
    dims: tuple[int, ...]
    location: str
    offset: int
    length: int | None


@dataclass
class OnnxLayout:
    """Where the tensors of one ONNX file are: inline ``raw_data`` spans and external references."""

    tensors: list[TensorSpan] = field(default_factory=list)
    external: list[ExternalTensor] = field(default_factory=list)


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxLayoutError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """List (field number, wire type, value-or-offset, length) of one message, without descending."""
    out: list[tuple[int, int, int, int]] = []
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxLayoutError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            out.append((number, wire, value, 0))
        elif wire == _I64:
            pos += 8
            out.append((number, wire, pos - 8, 8))
        elif wire == _I32:
            pos += 4
            out.append((number, wire, pos - 4, 4))
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            out.append((number, wire, pos, length))
            pos += length
        else:
            raise OnnxLayoutError(f"unsupported wire type {wire}")
        if pos > end:
            raise OnnxLayoutError("field runs past the end of its message")
    return out


def _tensor(buf: memoryview, start: int, end: int, ordinal: int, layout: OnnxLayout) -> None:
    dims: list[int] = []
    data_type = 0
    name = ""
    raw: tuple[int, int] | None = None
    external = False
    entries: dict[str, str] = {}
    for number, wire, value, length in _fields(buf, start, end):
        if number == 1 and wire == _VARINT:
            dims.append(value)
        elif number == 1 and wire == _LEN:
            pos = value
            while pos < value + length:
                dim, pos = _varint(buf, pos, value + length)
                dims.append(dim)
        elif number == 2 and wire == _VARINT:
            data_type = value
        elif number == 8 and wire == _LEN:
            name = bytes(buf[value : value + length]).decode("utf-8", "replace")
        elif number == 9 and wire == _LEN:
            raw = (value, length)
        elif number == 14 and wire == _VARINT:
            external = value == 1
        elif number == 13 and wire == _LEN:
            key = text = ""
            for sub, sub_wire, sub_value, sub_length in _fields(buf, value, value + length):
                if sub_wire == _LEN and sub in (1, 2):
                    decoded = bytes(buf[sub_value : sub_value + sub_length]).decode("utf-8", "replace")
                    key, text = (decoded, text) if sub == 1 else (key, decoded)
            entries[key] = text
    name = name or f"@{ordinal}"
    itemsize = ONNX_ITEMSIZE.get(data_type)
    if external and "location" in entries:
        try:
            offset = int(entries.get("offset", "0"))
            ext_length = int(entries["length"]) if "length" in entries else None
        except ValueError as exc:
            raise OnnxLayoutError(f"bad external data entry for {name}") from exc
        layout.external.append(
            ExternalTensor(name, data_type, tuple(dims), entries["location"], offset, ext_length)
        )
    elif raw is not None and itemsize is not None and raw[1] % itemsize == 0 and raw[1] > 0:
        layout.tensors.append(TensorSpan(name, data_type, tuple(dims), raw[0], raw[1], itemsize))


def _graph(buf: memoryview, start: int, end: int, layout: OnnxLayout, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise OnnxLayoutError("graphs nested too deeply")
    for number, wire, value, length in _fields(buf, start, end):
        if wire != _LEN:
            continue
        if number == 5:  # initializer
            _tensor(buf, value, value + length, len(layout.tensors) + len(layout.external), layout)
        elif number == 1:  # node -> attributes -> tensors and subgraphs (Constant, If, Loop, Scan)
            for attr_number, attr_wire, attr_value, attr_length in _fields(buf, value, value + length):
                if attr_number == 5 and attr_wire == _LEN:
                    _attribute(buf, attr_value, attr_value + attr_length, layout, depth)


def _attribute(buf: memoryview, start: int, end: int, layout: OnnxLayout, depth: int) -> None:
    for number, wire, value, length in _fields(buf, start, end):
        if wire != _LEN:
            continue
        if number in (5, 10):
            _tensor(buf, value, value + length, len(layout.tensors) + len(layout.external), layout)
        elif number in (6, 11):
            _graph(buf, value, value + length, layout, depth + 1)


def parse_onnx_layout(data: bytes | memoryview) -> OnnxLayout:
    """Locate every tensor of a serialized ONNX model.

    Args:
        data: The whole ``.onnx`` file.

    Returns:
        The inline tensors (sorted by offset) and the external-data references.

    Raises:
        OnnxLayoutError: If the bytes are not a ModelProto with a graph (callers fall back to generic).
    """
    buf = memoryview(data)
    top = _fields(buf, 0, len(buf))
    numbers = {number for number, _, _, _ in top}
    # ir_version (1, varint) and graph (7, bytes) are what make random bytes very unlikely to pass.
    if not any(number == 1 and wire == _VARINT for number, wire, _, _ in top) or 7 not in numbers:
        raise OnnxLayoutError("no ir_version or graph: not an ONNX model")
    layout = OnnxLayout()
    for number, wire, value, length in top:
        if number == 7 and wire == _LEN:
            _graph(buf, value, value + length, layout, 0)
    layout.tensors.sort(key=lambda span: span.offset)
    return layout
