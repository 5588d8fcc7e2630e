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
    literal_model,
    make_delta,
    read_header,
)
from ota.core.delta.errors import DeltaInputError
from ota.core.delta.format import (
    CHUNK_CHANGED_WORDS,
    CHUNK_DENSE,
    CHUNK_WORD_SPARSE,
    DIGEST_BYTES,
    LITERAL_MODEL,
    LITERAL_ZSTD,
    OP_TENSOR,
    TRANSFORM_SCALE,
    TRANSFORM_XOR,
    PatchHeader,
    encode_copy,
    encode_header,
    encode_literal,
    encode_tensor,
    encode_varint,
    literal_prime,
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
    assert header.base_length is not None
    fields = {"magic": (0, 2), "version": (2, 1), "flags": (3, 1), "result_sha256": (4, DIGEST_BYTES)}
    position = 4 + DIGEST_BYTES
    length = len(encode_varint(header.result_length))
    fields["result_length"] = (position, length)
    position += length
    fields["base_sha256"] = (position, DIGEST_BYTES)
    position += DIGEST_BYTES
    for name, value in [
        ("base_length", 2 * (header.base_length - header.result_length)),  # zigzag of a non-negative delta
        ("control_length", header.control_length),
        ("literal_length", header.literal_length),
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
    "flags",
    "result_sha256",
    "result_length",
    "base_sha256",
    "base_length",
    "control_length",
    "literal_length",
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
        ("result_sha256", ResultMismatchError),
        ("base_sha256", BaseMismatchError),
        ("base_length", BaseMismatchError),
        ("control_length", PatchCorruptError),
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


@pytest.mark.parametrize(
    ("flags", "what"),
    [
        (0x04, "codec 0"),
        (0x07, "codec 3"),
        (0x05 | 3 << 3, "literal method 3"),
        (0x45, "reserved bit 6"),
        (0x85, "reserved bit 7"),
    ],
)
def test_unknown_codec_method_or_flag_is_a_format_error(
    patched: tuple[Path, Path, Path], tmp_path: Path, flags: int, what: str
) -> None:
    old, _, patch = patched
    data = bytearray(patch.read_bytes())
    data[3] = flags
    bad = tmp_path / "bad.efd"
    bad.write_bytes(bytes(data))
    _assert_fails(old, bad, tmp_path / "out.onnx", PatchFormatError)


def test_version_1_patches_are_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "v1.efd"
    bad.write_bytes(b"EFDL\x01\x01\x01" + bytes(80))
    error = _assert_fails(None, bad, tmp_path / "out", PatchFormatError)
    assert "version 1" in str(error)


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
    # Extra bytes at the end are refused too (they would be tensor data that no operation reads).
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
             result: bytes = b"x" * 10, literal_method: int = 0) -> tuple[Path, Path]:  # fmt: skip
    base_path = tmp_path / "base"
    base_path.write_bytes(base)
    header = encode_header(
        codec=1,
        base_sha256=hashlib.sha256(base).digest(),
        base_length=len(base),
        result_sha256=hashlib.sha256(result).digest(),
        result_length=len(result),
        control_length=len(control),
        literal_length=len(literal),
        literal_method=literal_method,
    )
    patch = tmp_path / "crafted.efd"
    patch.write_bytes(header + control + literal + data)
    return base_path, patch


def _v(value: int) -> bytes:
    return encode_varint(value)


def _tensor_head(count: int, transform_byte: int) -> bytes:
    return _v(count << 2 | OP_TENSOR) + bytes([transform_byte])


CRAFTED = [
    ("copy past the end of the base", encode_copy(10, 95), LimitExceededError),
    ("copy before the base", encode_copy(3, -5), LimitExceededError),
    ("copy more than the result", encode_copy(50), LimitExceededError),
    ("huge literal", encode_literal(2**60), LimitExceededError),
    ("literal without section", encode_literal(5) + encode_copy(5), PatchCorruptError),
    ("zero-length operation", b"\x00", PatchCorruptError),
    ("control ends before the result", encode_copy(5), PatchCorruptError),
    ("bytes after the last operation", encode_copy(10) + b"\x04", PatchCorruptError),
    ("overlong varint", b"\xff" * 12, PatchCorruptError),
    ("tensor too big", encode_tensor(TRANSFORM_XOR, 4, 2**40, 0), LimitExceededError),
    ("tensor bad transform", _tensor_head(1, 9 << 2 | 2) + _v(0), PatchCorruptError),
    ("tensor without its transform byte", _v(1 << 2 | OP_TENSOR), PatchCorruptError),
    ("tensor outside base", encode_tensor(TRANSFORM_XOR, 1, 5, 98), LimitExceededError),
    ("tensor without data", encode_tensor(TRANSFORM_XOR, 1, 5, 0) + encode_copy(5), PatchCorruptError),
    ("wrong bytes", encode_copy(10), ResultMismatchError),
]


@pytest.mark.parametrize(("case", "control", "error"), CRAFTED, ids=[row[0] for row in CRAFTED])
def test_crafted_operations_are_bounded(
    tmp_path: Path, case: str, control: bytes, error: type[DeltaError]
) -> None:
    base, patch = _crafted(tmp_path, bytes(range(100)), control)
    _assert_fails(base, patch, tmp_path / "out", error)


def test_operation_encoders_refuse_what_apply_would() -> None:
    with pytest.raises(ValueError):
        encode_copy(0)
    with pytest.raises(ValueError):
        encode_literal(0)
    with pytest.raises(ValueError):
        encode_tensor(TRANSFORM_XOR, 3, 1, 0)
    with pytest.raises(ValueError):
        encode_tensor(TRANSFORM_XOR, 4, 1, None)
    # The small cases are one byte: a copy of the next 23 base bytes, a 31-byte literal.
    assert len(encode_copy(23)) == 1 and len(encode_literal(31)) == 1
    assert len(encode_copy(23, 0)) == 1 and len(encode_copy(23, -1)) == 2


def test_crafted_data_section_is_checked(tmp_path: Path) -> None:
    control = encode_tensor(TRANSFORM_XOR, 1, 5, 0) + encode_copy(5)
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
        control = encode_tensor(TRANSFORM_SCALE, 4, 4, 0)
        data = _v(channels) + bytes(4 * channels)
        base, patch = _crafted(tmp_path, bytes(range(100)), control, data=data, result=b"x" * 16)
        _assert_fails(base, patch, tmp_path / "out", PatchCorruptError)


def test_crafted_literal_with_garbage_zstd(tmp_path: Path) -> None:
    base, patch = _crafted(
        tmp_path, bytes(range(100)), encode_literal(10), literal=b"garbage!!", literal_method=LITERAL_ZSTD
    )
    _assert_fails(base, patch, tmp_path / "out", PatchCorruptError)


# ---------------------------------------------------------------- the model-coded literal section
def _model_patch(
    tmp_path: Path, result: bytes, payload: bytes, *, length: int | None = None
) -> tuple[Path, Path]:
    count = len(result) if length is None else length
    return _crafted(
        tmp_path,
        bytes(range(100)),
        encode_literal(count),
        literal=payload,
        result=result,
        literal_method=LITERAL_MODEL,
    )


def test_crafted_model_literal_roundtrips_and_checks_its_payload(tmp_path: Path) -> None:
    result = b"release notes: same weights, new notes"
    # One literal replacing the whole base: the dictionary rule makes the whole base its prime.
    prime = bytes(range(100))
    assert literal_prime([(0, 100)], 100, literal_model.MAX_PRIME) == [(0, 100)]
    payload = literal_model.encode(result, prime)
    base, patch = _model_patch(tmp_path, result, payload)
    apply_delta(base, patch, tmp_path / "ok")
    assert (tmp_path / "ok").read_bytes() == result
    # Bytes the decoder never reaches: the payload was tampered with or mis-framed.
    base, patch = _model_patch(tmp_path, result, payload + bytes(8))
    _assert_fails(base, patch, tmp_path / "out", PatchCorruptError)
    # A damaged payload still decodes to something; the result's sha256 refuses it.
    damaged = bytes([payload[0] ^ 0x40]) + payload[1:]
    base, patch = _model_patch(tmp_path, result, damaged)
    _assert_fails(base, patch, tmp_path / "out", ResultMismatchError)


def test_crafted_model_literal_is_bounded(tmp_path: Path) -> None:
    too_long = b"x" * (literal_model.MAX_LITERAL + 1)
    base, patch = _model_patch(tmp_path, too_long, b"\x00" * 16)
    _assert_fails(base, patch, tmp_path / "out", LimitExceededError)
    # A payload far longer than any model-coded stream of the allowed size is refused before decoding.
    base, patch = _model_patch(tmp_path, b"x" * 10, bytes(3 * literal_model.MAX_LITERAL))
    _assert_fails(base, patch, tmp_path / "out", LimitExceededError)
