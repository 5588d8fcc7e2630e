"""The version 2 header and operation encodings: exact round trips, and typed refusals of every truncation."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ota.core.delta.errors import DeltaError, PatchCorruptError, PatchFormatError
from ota.core.delta.format import (
    CODEC_GENERIC,
    CODEC_MODEL,
    DIGEST_BYTES,
    FORMAT_VERSION,
    LITERAL_MODEL,
    LITERAL_STORED,
    LITERAL_ZSTD,
    MAGIC,
    OP_COPY,
    OP_COPY_NEXT,
    OP_LITERAL,
    OP_TENSOR,
    SECTION_STORED,
    SECTION_ZSTD,
    TRANSFORM_RAW,
    TRANSFORM_SUB,
    decode_operation_head,
    decode_tensor_byte,
    decode_varint,
    digest_matches,
    encode_copy,
    encode_header,
    encode_literal,
    encode_tensor,
    encode_varint,
    literal_prime,
    parse_header,
    unzigzag,
)

lengths = st.integers(0, 2**40)


@settings(max_examples=200, deadline=None)
@given(
    codec=st.sampled_from([CODEC_MODEL, CODEC_GENERIC]),
    has_base=st.booleans(),
    base_length=lengths,
    result_length=lengths,
    control_length=st.integers(1, 2**20),
    literal_length=st.integers(0, 2**20),
    data_length=st.integers(0, 2**20),
    control_method=st.sampled_from([SECTION_STORED, SECTION_ZSTD]),
    literal_method=st.sampled_from([LITERAL_STORED, LITERAL_ZSTD, LITERAL_MODEL]),
)
def test_header_roundtrip(
    codec: int,
    has_base: bool,
    base_length: int,
    result_length: int,
    control_length: int,
    literal_length: int,
    data_length: int,
    control_method: int,
    literal_method: int,
) -> None:
    base_digest = hashlib.sha256(b"base").digest() if has_base else None
    header = encode_header(
        codec=codec,
        base_sha256=base_digest,
        base_length=base_length if has_base else None,
        result_sha256=hashlib.sha256(b"result").digest(),
        result_length=result_length,
        control_length=control_length,
        literal_length=literal_length,
        control_method=control_method,
        literal_method=literal_method,
    )
    total = len(header) + control_length + literal_length + data_length
    parsed = parse_header(header, file_length=total)
    assert parsed.version == FORMAT_VERSION
    assert parsed.codec_id == codec
    assert parsed.base_sha256 == (base_digest[:DIGEST_BYTES].hex() if base_digest else None)
    assert parsed.base_length == (base_length if has_base else None)
    assert parsed.result_sha256 == hashlib.sha256(b"result").hexdigest()[: 2 * DIGEST_BYTES]
    assert digest_matches(hashlib.sha256(b"result").hexdigest(), parsed.result_sha256)
    assert not digest_matches(hashlib.sha256(b"other").hexdigest(), parsed.result_sha256)
    assert parsed.result_length == result_length
    assert (parsed.control_length, parsed.literal_length, parsed.data_length) == (
        control_length,
        literal_length,
        data_length,
    )
    assert (parsed.control_method_id, parsed.literal_method_id) == (control_method, literal_method)
    assert parsed.header_length == len(header) and parsed.patch_length == total
    # Every truncation of the header, and a file too short for its sections, is a typed error.
    for cut in range(len(header)):
        with pytest.raises(DeltaError):
            parse_header(header[:cut], file_length=total)
    with pytest.raises(PatchCorruptError):
        parse_header(header, file_length=total - data_length - 1)


def test_metadata_patch_header_is_small() -> None:
    # Magic, version, flags, two 8-byte digest prefixes and four varints: 27 bytes for a 1 MB model's
    # metadata patch (75 in format version 2, whose whole digests made it lose to zstd --patch-from).
    header = encode_header(
        codec=CODEC_MODEL,
        base_sha256=bytes(32),
        base_length=986_843,
        result_sha256=bytes(32),
        result_length=986_973,
        control_length=9,
        literal_length=75,
        literal_method=LITERAL_MODEL,
    )
    assert len(header) == 2 + 1 + 1 + 8 + 3 + 8 + 2 + 1 + 1


def test_bad_magic_and_versions_are_format_errors() -> None:
    header = encode_header(
        codec=CODEC_MODEL,
        base_sha256=None,
        base_length=None,
        result_sha256=bytes(32),
        result_length=1,
        control_length=1,
        literal_length=0,
    )
    with pytest.raises(PatchFormatError, match="bad magic"):
        parse_header(b"PK" + header[2:], file_length=len(header) + 1)
    with pytest.raises(PatchFormatError, match="version 4"):
        parse_header(header[:2] + b"\x04" + header[3:], file_length=len(header) + 1)
    with pytest.raises(PatchFormatError, match="version 1"):
        parse_header(b"EFDL\x01\x01\x00" + bytes(40), file_length=100)


def test_version_2_headers_with_whole_digests_are_still_read() -> None:
    result, base = hashlib.sha256(b"result").digest(), hashlib.sha256(b"base").digest()
    v2 = MAGIC + bytes([2, CODEC_MODEL | 0x04]) + result + encode_varint(10) + base + encode_varint(0)
    v2 += encode_varint(1) + encode_varint(0)
    parsed = parse_header(v2, file_length=len(v2) + 1)
    assert parsed.version == 2 and parsed.result_sha256 == result.hex() and parsed.base_sha256 == base.hex()
    assert parsed.result_length == 10 and parsed.base_length == 10 and parsed.header_length == len(v2)
    assert digest_matches(result.hex(), parsed.result_sha256)


@given(length=st.integers(1, 2**40), delta=st.integers(-(2**40), 2**40))
def test_operation_encodings_roundtrip(length: int, delta: int) -> None:
    head, position = decode_varint(encode_copy(length), 0)
    assert decode_operation_head(head) == (OP_COPY_NEXT, length)
    encoded = encode_copy(length, delta)
    head, position = decode_varint(encoded, 0)
    if delta:
        assert decode_operation_head(head) == (OP_COPY, length)
        offset, position = decode_varint(encoded, position)
        assert unzigzag(offset) == delta
    else:
        assert decode_operation_head(head) == (OP_COPY_NEXT, length)
    assert position == len(encoded)
    head, _ = decode_varint(encode_literal(length), 0)
    assert decode_operation_head(head) == (OP_LITERAL, length)
    encoded = encode_tensor(TRANSFORM_SUB, 8, length, delta)
    head, position = decode_varint(encoded, 0)
    assert decode_operation_head(head) == (OP_TENSOR, length)
    assert decode_tensor_byte(encoded[position]) == (TRANSFORM_SUB, 8)
    assert unzigzag(decode_varint(encoded, position + 1)[0]) == delta
    raw = encode_tensor(TRANSFORM_RAW, 2, length, None)
    assert decode_tensor_byte(raw[-1]) == (TRANSFORM_RAW, 2)


def test_operation_decoding_refuses_zero_lengths_and_unknown_transforms() -> None:
    with pytest.raises(PatchCorruptError):
        decode_operation_head(OP_LITERAL)
    with pytest.raises(PatchCorruptError):
        decode_tensor_byte(7 << 2)


@pytest.mark.parametrize(
    ("ranges", "base_length", "expected"),
    [
        ([], 5000, [(0, 2048)]),  # a pure insertion: the start of the base
        ([], 100, [(0, 100)]),
        ([(10, 20)], 5000, [(0, 10), (10, 20)]),  # the replaced bytes, after the start up to them
        ([(3000, 500)], 5000, [(0, 1548), (3000, 500)]),
        ([(100, 1000), (3000, 1500)], 9000, [(552, 548), (3000, 1500)]),  # the last 2 KiB of the ranges
        ([(0, 100)], 100, [(0, 100)]),  # a literal replacing the whole base: no byte twice
    ],
)
def test_literal_prime_rule(
    ranges: list[tuple[int, int]], base_length: int, expected: list[tuple[int, int]]
) -> None:
    assert literal_prime(ranges, base_length, 2048) == expected
