"""The context-mixing literal coder: exact round trips, pinned output (it is part of the format), bounds."""

from __future__ import annotations

import hashlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from ota.core.delta import literal_model

NOTES = b"(\x022>EdgeFleet release 2026.11.28: same weights, new release notes."
PRIME = b"\x08\x0a\x12\x07pytorch\x1a\x0a2.13.0+cpu:\x05input\x12\x0fbody.0.0.weight"


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300), prime=st.binary(max_size=200))
def test_roundtrip_arbitrary_bytes(data: bytes, prime: bytes) -> None:
    payload = literal_model.encode(data, prime)
    assert literal_model.decode(payload, prime, len(data)) == data


@settings(max_examples=20, deadline=None)
@given(text=st.text(max_size=200))
def test_roundtrip_text_and_never_expands_much(text: str) -> None:
    data = text.encode()
    payload = literal_model.encode(data, PRIME)
    assert literal_model.decode(payload, PRIME, len(data)) == data
    # Random bytes cost about 8.1 bits each (make keeps the stored literal then).
    assert len(payload) <= len(data) + len(data) // 50 + 4


def test_output_is_pinned() -> None:
    # Make (server) and apply (device) may run different builds: any change to the model, its tables or
    # the coder changes these bytes, and needs a new format version.
    payload = literal_model.encode(NOTES, PRIME)
    assert payload.hex() == PINNED
    long = bytes(range(256)) * 8
    assert hashlib.sha256(literal_model.encode(long, long[:2048])).hexdigest() == PINNED_LONG


def test_short_text_is_smaller_than_zstd() -> None:
    payload = literal_model.encode(NOTES, PRIME)
    compressor = zstandard.ZstdCompressor(
        level=19, write_checksum=False, write_content_size=False, write_dict_id=False
    )
    assert len(payload) < len(compressor.compress(NOTES)) - 10


def test_decode_refuses_unreached_trailing_bytes() -> None:
    payload = literal_model.encode(NOTES, PRIME)
    with pytest.raises(ValueError, match="unused"):
        literal_model.decode(payload + b"\x00" * 8, PRIME, len(NOTES))


def test_damaged_payload_decodes_to_other_bytes_of_the_same_length() -> None:
    # No error and no overrun: the patch's result sha256 is what refuses it.
    payload = bytearray(literal_model.encode(NOTES, PRIME))
    payload[len(payload) // 2] ^= 0x10
    decoded = literal_model.decode(bytes(payload), PRIME, len(NOTES))
    assert len(decoded) == len(NOTES) and decoded != NOTES
    assert len(literal_model.decode(b"", PRIME, 40)) == 40


def test_make_uses_the_model_only_where_it_pays_for_its_apply_time() -> None:
    from ota.core.delta.format import LITERAL_MODEL, LITERAL_STORED, LITERAL_ZSTD
    from ota.core.delta.make import _choose_literals

    calls: list[int] = []

    def model(size: int = 75) -> bytes:
        calls.append(size)
        return bytes(size)

    plain = (LITERAL_ZSTD, bytes(110))
    # A metadata-only patch: the model saves a fifth of it.
    assert _choose_literals(plain, model, 90)[0] == LITERAL_MODEL
    # A fine-tune's patch: the same 35 bytes are nothing next to half a megabyte of tensor data, and the
    # model is not even run.
    calls.clear()
    assert _choose_literals(plain, model, 500_000)[0] == LITERAL_ZSTD
    assert not calls
    # Never a bigger section, and never for streams too long for the model.
    assert _choose_literals((LITERAL_STORED, bytes(10)), lambda: bytes(12), 0)[0] == LITERAL_STORED
    assert _choose_literals(plain, None, 0) == plain


def test_bounds_are_enforced() -> None:
    with pytest.raises(ValueError):
        literal_model.encode(b"x" * (literal_model.MAX_LITERAL + 1), b"")
    with pytest.raises(ValueError):
        literal_model.decode(b"", b"", literal_model.MAX_LITERAL + 1)
    with pytest.raises(ValueError):
        literal_model.decode(b"", b"x" * (literal_model.MAX_PRIME + 1), 1)


PINNED = "c357f24a1ae3244d98fc25e3b894b685d90db4cf4f1cd8864eddea8628248c5bf988a696b34f11ef1756c5a210"
PINNED_LONG = "a0ff586f1a8692e33f3fd8e1fab2df0fdbded9409b03a9025777f46dddb9bd2b"
