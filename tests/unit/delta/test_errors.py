"""Hostile and broken inputs: every header field corrupted, truncations, wrong bases, crafted operations.

Each case must raise a typed ``DeltaError`` subclass and leave no output file (nor a temp file) behind.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ota.core.delta import (
    BaseMismatchError,
    DeltaError,
    LimitExceededError,
    PatchCorruptError,
    PatchFormatError,
    ResultMismatchError,
    apply_delta,
    make_delta,
    read_header,
)
from ota.core.delta.errors import DeltaInputError
from ota.core.delta.format import (
    CHUNK_CHANGED_WORDS,
    CHUNK_DENSE,
    CHUNK_WORD_SPARSE,
    OP_COPY,
    OP_END,
    OP_LITERAL,
    OP_TENSOR,
    SECTION_STORED,
    TRANSFORM_SCALE,
    TRANSFORM_XOR,
    PatchHeader,
    encode_header,
    encode_varint,
    zigzag,
)


@pytest.fixture
def patched(small_patch: tuple[Path, Path, Path]) -> tuple[Path, Path, Path]:
    return small_patch


def _assert_fails(
    base: Path | None, patch: Path, out: Path, error: type[DeltaError], **kwargs: int
) -> DeltaError:
    with pytest.raises(error) as caught:
        apply_delta(base, patch, out, **kwargs)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))
    assert str(caught.value)  # a message a person can read
    return caught.value


def _field_offsets(patch: bytes) -> dict[str, tuple[int, int]]:
    """(offset, length) of each header field of a delta patch (base present)."""
    header = read_header_bytes(patch)
    fields = {"magic": (0, 4), "version": (4, 1), "codec": (5, 1), "flags": (6, 1), "base_sha256": (7, 32)}
    position = 39
    for name in ["base_length"]:
        length = len(encode_varint(header.base_length or 0))
        fields[name] = (position, length)
        position += length
    fields["result_sha256"] = (position, 32)
    position += 32
    for name, value in [
        ("result_length", header.result_length),
        ("control_length", header.control_length),
        ("literal_length", header.literal_length),
        ("data_length", header.data_length),
    ]:
        length = len(encode_varint(value))
        fields[name] = (position, length)
        position += length
    assert position == header.header_length
    return fields


def read_header_bytes(patch: bytes) -> PatchHeader:
    from ota.core.delta.format import parse_header

    return parse_header(patch, file_length=len(patch))


FIELDS = [
    "magic",
    "version",
    "codec",
    "flags",
    "base_sha256",
    "base_length",
    "result_sha256",
    "result_length",
    "control_length",
    "literal_length",
    "data_length",
]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("mutation", ["flip-low-bit", "set-0xff"])
def test_every_header_field_corrupted_gives_typed_error_and_no_output(
    patched: tuple[Path, Path, Path], tmp_path: Path, field: str, mutation: str
) -> None:
    old, _, patch = patched
    data = bytearray(patch.read_bytes())
    offset, length = _field_offsets(bytes(data))[field]
    if mutation == "flip-low-bit":
        data[offset] ^= 0x01
    else:
        # Keep varints well-formed (last byte without the continuation bit) so deeper checks are reached.
        data[offset : offset + length] = b"\xff" * (length - 1) + b"\x7f"
    bad = tmp_path / "bad.efd"
    bad.write_bytes(bytes(data))
    _assert_fails(old, bad, tmp_path / "out.onnx", DeltaError)


@pytest.mark.parametrize(
    ("field", "error"),
    [
        ("magic", PatchFormatError),
        ("version", PatchFormatError),
        ("flags", PatchFormatError),
        ("base_sha256", BaseMismatchError),
        ("result_sha256", ResultMismatchError),
        ("control_length", PatchCorruptError),
        ("data_length", PatchCorruptError),
    ],
)
def test_header_fields_map_to_specific_errors(
    patched: tuple[Path, Path, Path], tmp_path: Path, field: str, error: type[DeltaError]
) -> None:
    old, _, patch = patched
    data = bytearray(patch.read_bytes())
    offset, _ = _field_offsets(bytes(data))[field]
    data[offset] ^= 0x02
    bad = tmp_path / "bad.efd"
    bad.write_bytes(bytes(data))
    _assert_fails(old, bad, tmp_path / "out.onnx", error)


def test_unknown_codec_is_a_format_error(patched: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, _, patch = patched
    data = bytearray(patch.read_bytes())
    data[5] = 0x77
    bad = tmp_path / "bad.efd"
    bad.write_bytes(bytes(data))
    _assert_fails(old, bad, tmp_path / "out.onnx", PatchFormatError)


def test_truncations_give_typed_errors(patched: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, _, patch = patched
    data = patch.read_bytes()
    cuts = sorted(
        {0, 1, 3, 4, 6, 7, 20, 40, 80, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1}
    )
    for cut in cuts:
        bad = tmp_path / f"cut{cut}.efd"
        bad.write_bytes(data[:cut])
        _assert_fails(old, bad, tmp_path / "out.onnx", DeltaError)
    # Extra bytes at the end are refused too (the header says exactly how long the patch is).
    bad = tmp_path / "long.efd"
    bad.write_bytes(data + b"\x00")
    _assert_fails(old, bad, tmp_path / "out.onnx", PatchCorruptError)


def test_wrong_base_is_refused_before_writing(patched: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, new, patch = patched
    _assert_fails(new, patch, tmp_path / "out.onnx", BaseMismatchError)
    same_length = tmp_path / "same-length"
    same_length.write_bytes(bytes(old.stat().st_size))
    _assert_fails(same_length, patch, tmp_path / "out.onnx", BaseMismatchError)
    _assert_fails(None, patch, tmp_path / "out.onnx", BaseMismatchError)


def test_missing_files_are_typed_errors(patched: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, _, patch = patched
    _assert_fails(tmp_path / "nope", patch, tmp_path / "out.onnx", DeltaInputError)
    _assert_fails(old, tmp_path / "nope.efd", tmp_path / "out.onnx", DeltaInputError)
    with pytest.raises(DeltaInputError):
        make_delta(tmp_path / "nope", old, tmp_path / "p2")
    with pytest.raises(DeltaInputError):
        apply_delta(old, patch, tmp_path / "no-such-dir" / "out.onnx")


def test_existing_output_survives_a_failed_apply(patched: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, new, patch = patched
    out = tmp_path / "out.onnx"
    out.write_bytes(b"the installed model")
    with pytest.raises(BaseMismatchError):
        apply_delta(new, patch, out)
    assert out.read_bytes() == b"the installed model"


def test_max_output_bytes_is_enforced(patched: tuple[Path, Path, Path], tmp_path: Path) -> None:
    old, new, patch = patched
    _assert_fails(
        old, patch, tmp_path / "out.onnx", LimitExceededError, max_output_bytes=new.stat().st_size - 1
    )
    apply_delta(old, patch, tmp_path / "ok.onnx", max_output_bytes=new.stat().st_size)


def test_not_a_patch(tmp_path: Path) -> None:
    bad = tmp_path / "x"
    bad.write_bytes(b"PK\x03\x04 definitely a zip file")
    with pytest.raises(PatchFormatError):
        read_header(bad)
    _assert_fails(None, bad, tmp_path / "out", PatchFormatError)


# ---------------------------------------------------------------- crafted patches: valid header, hostile body
def _crafted(tmp_path: Path, base: bytes, control: bytes, *, literal: bytes = b"", data: bytes = b"",
             result: bytes = b"x" * 10) -> tuple[Path, Path]:  # fmt: skip
    base_path = tmp_path / "base"
    base_path.write_bytes(base)
    control_section = bytes([SECTION_STORED]) + control
    literal_section = bytes([SECTION_STORED]) + literal if literal else b""
    header = encode_header(
        codec=1,
        base_sha256=hashlib.sha256(base).digest(),
        base_length=len(base),
        result_sha256=hashlib.sha256(result).digest(),
        result_length=len(result),
        control_length=len(control_section),
        literal_length=len(literal_section),
        data_length=len(data),
    )
    patch = tmp_path / "crafted.efd"
    patch.write_bytes(header + control_section + literal_section + data)
    return base_path, patch


def _v(value: int) -> bytes:
    return encode_varint(value)


END = bytes([OP_END])
XOR4 = bytes([OP_TENSOR, TRANSFORM_XOR, 4])
XOR1 = bytes([OP_TENSOR, TRANSFORM_XOR, 1])
CRAFTED = [
    ("copy past the end of the base", bytes([OP_COPY]) + _v(zigzag(90)) + _v(20) + END, LimitExceededError),
    ("copy before the base", bytes([OP_COPY]) + _v(zigzag(-5)) + _v(3) + END, LimitExceededError),
    ("copy more than the result", bytes([OP_COPY]) + _v(0) + _v(50) + END, LimitExceededError),
    ("huge literal", bytes([OP_LITERAL]) + _v(2**60) + END, LimitExceededError),
    ("literal without section", bytes([OP_LITERAL]) + _v(5) + END, PatchCorruptError),
    ("unknown opcode", bytes([0x42]), PatchCorruptError),
    ("missing end", bytes([OP_COPY]) + _v(0) + _v(5), PatchCorruptError),
    ("overlong varint", bytes([OP_COPY]) + b"\xff" * 12, PatchCorruptError),
    ("tensor too big", XOR4 + _v(2**40) + _v(0) + END, LimitExceededError),
    ("tensor bad itemsize", bytes([OP_TENSOR, TRANSFORM_XOR, 3]) + _v(1) + _v(0) + END, PatchCorruptError),
    ("tensor bad transform", bytes([OP_TENSOR, 9, 4]) + _v(1) + _v(0) + END, PatchCorruptError),
    ("tensor outside base", XOR1 + _v(5) + _v(zigzag(98)) + END, LimitExceededError),
    ("tensor without data", XOR1 + _v(5) + _v(0) + END, PatchCorruptError),
    ("short result", bytes([OP_COPY]) + _v(0) + _v(4) + END, ResultMismatchError),
]


@pytest.mark.parametrize(("case", "control", "error"), CRAFTED, ids=[row[0] for row in CRAFTED])
def test_crafted_operations_are_bounded(
    tmp_path: Path, case: str, control: bytes, error: type[DeltaError]
) -> None:
    base, patch = _crafted(tmp_path, bytes(range(100)), control)
    _assert_fails(base, patch, tmp_path / "out", error)


def test_crafted_data_section_is_checked(tmp_path: Path) -> None:
    control = bytes([OP_TENSOR, TRANSFORM_XOR, 1]) + _v(5) + _v(0) + bytes([OP_END])
    dense = bytes([CHUNK_DENSE])
    cases = {
        "stored plane of the wrong size": dense + b"\x00" + _v(4) + b"abcd",
        "unknown plane method": dense + b"\x07" + _v(5) + b"abcde",
        "garbage zstd plane": dense + b"\x01" + _v(5) + b"abcde",
        "garbage sparse plane": dense + b"\x02" + _v(5) + b"\x02abcd",
        "oversized compressed plane": dense + b"\x01" + _v(5000) + bytes(5000),
        "trailing data": dense + b"\x00" + _v(5) + b"abcde" + b"extra",
        "unknown chunk mode": b"\x09" + b"\x00" + _v(5) + b"abcde",
        "more tokens than words": bytes([CHUNK_WORD_SPARSE]) + _v(9) + b"\x00" + _v(9) + bytes(9),
        "tokens past the chunk": bytes([CHUNK_WORD_SPARSE]) + _v(1) + b"\x00" + _v(1) + b"\x09",
        "map without its words": bytes([CHUNK_CHANGED_WORDS]) + _v(1) + b"\x00" + _v(1) + b"\x01",
    }
    for name, data in cases.items():
        base, patch = _crafted(tmp_path, bytes(range(100)), control, data=data)
        with pytest.raises((PatchCorruptError, LimitExceededError)) as caught:
            apply_delta(base, patch, tmp_path / "out")
        assert not (tmp_path / "out").exists(), name
        assert "sha256" not in str(caught.value), name  # caught by the parser, not by the final hash


def test_crafted_scale_tensor_checks_channels(tmp_path: Path) -> None:
    for channels in (0, 3, 7):
        control = bytes([OP_TENSOR, TRANSFORM_SCALE, 4]) + _v(4) + _v(0) + bytes([OP_END])
        data = _v(channels) + bytes(4 * channels)
        base, patch = _crafted(tmp_path, bytes(range(100)), control, data=data, result=b"x" * 16)
        _assert_fails(base, patch, tmp_path / "out", PatchCorruptError)


def test_crafted_literal_with_garbage_zstd(tmp_path: Path) -> None:
    control = bytes([OP_LITERAL]) + _v(10) + bytes([OP_END])
    base, patch = _crafted(tmp_path, bytes(range(100)), control, literal=b"garbage!!")
    raw = bytearray(patch.read_bytes())
    raw[-10] = 1  # the literal section's method byte (before its 9 bytes): claim zstd
    patch.write_bytes(bytes(raw))
    _assert_fails(base, patch, tmp_path / "out", PatchCorruptError)
