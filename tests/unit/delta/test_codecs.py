"""The plane codecs: sparse zero-run coding and the per-tensor transforms invert exactly, on any input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ota.core.delta.codecs import forward_planes, inverse_planes, sparse_decode, sparse_encode
from ota.core.delta.format import TRANSFORM_RAW, TRANSFORM_SCALE, TRANSFORM_SUB, TRANSFORM_XOR

sparse_planes = st.lists(st.one_of(st.just(0), st.integers(0, 255)), max_size=3000).map(bytes)


@settings(max_examples=200, deadline=None)
@given(plane=st.one_of(st.binary(max_size=2000), sparse_planes))
def test_sparse_roundtrip(plane: bytes) -> None:
    tokens, values = sparse_encode(plane)
    assert sparse_decode(tokens, values, len(plane)) == plane
    assert len(values) == sum(1 for byte in plane if byte)


def test_sparse_long_zero_runs() -> None:
    plane = bytes(1000) + b"\x05" + bytes(255) + b"\x01" + bytes(10)
    tokens, values = sparse_encode(plane)
    assert values == b"\x05\x01"
    assert sparse_decode(tokens, values, len(plane)) == plane


@pytest.mark.parametrize(
    ("tokens", "values", "count"),
    [(b"\x05", b"", 10), (b"\x05", b"\x01\x02", 10), (b"\x09\x09", b"\x01\x01", 10), (b"\xff", b"", 10)],
)
def test_sparse_decode_rejects_inconsistent_input(tokens: bytes, values: bytes, count: int) -> None:
    with pytest.raises(ValueError):
        sparse_decode(tokens, values, count)


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    itemsize=st.sampled_from([1, 2, 4, 8]),
    transform=st.sampled_from([TRANSFORM_RAW, TRANSFORM_XOR, TRANSFORM_SUB]),
)
def test_transforms_invert_on_arbitrary_words(data: st.DataObject, itemsize: int, transform: int) -> None:
    count = data.draw(st.integers(1, 64))
    new = data.draw(st.binary(min_size=count * itemsize, max_size=count * itemsize))
    base = data.draw(st.binary(min_size=count * itemsize, max_size=count * itemsize))
    base_arg = None if transform == TRANSFORM_RAW else base
    planes = forward_planes(new, base_arg, transform=transform, itemsize=itemsize)
    rebuilt = inverse_planes(planes, base_arg, transform=transform, itemsize=itemsize, count=count)
    assert rebuilt.tobytes() == new


@settings(max_examples=100, deadline=None)
@given(data=st.data(), channels=st.integers(1, 4), inner=st.integers(1, 16))
def test_scale_transform_inverts_on_arbitrary_float_bits(
    data: st.DataObject, channels: int, inner: int
) -> None:
    # Arbitrary bit patterns: NaNs with payloads, infinities, denormals, negative zero, all of them.
    count = channels * inner
    new = data.draw(st.binary(min_size=4 * count, max_size=4 * count))
    base = data.draw(st.binary(min_size=4 * count, max_size=4 * count))
    scales = np.array(
        data.draw(st.lists(st.floats(width=32, allow_nan=False), min_size=channels, max_size=channels)),
        dtype=np.float32,
    )
    first = data.draw(st.integers(0, count - 1))
    chunk_new, chunk_base = new[4 * first :], base[4 * first :]
    planes = forward_planes(
        chunk_new, chunk_base, transform=TRANSFORM_SCALE, itemsize=4, scales=scales, first=first, inner=inner
    )
    rebuilt = inverse_planes(
        planes,
        chunk_base,
        transform=TRANSFORM_SCALE,
        itemsize=4,
        count=count - first,
        scales=scales,
        first=first,
        inner=inner,
    )
    assert rebuilt.tobytes() == chunk_new
