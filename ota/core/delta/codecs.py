"""Per-tensor transforms of the delta engine: XOR or subtraction against the base tensor, byte-plane shuffle.

Shared by make (forward) and apply (inverse) in ``ota.core.delta``; numpy only, so the edge agent can run it.
Why it works: a float tensor that barely changed keeps its sign, exponent and high mantissa bits, so XOR
(or integer subtraction of the bit patterns) against the base leaves mostly zero high bytes. Splitting each
element into byte planes (all byte-0s, then all byte-1s, ...) groups those zeros so zstd removes them, while
the noisy low-mantissa planes are stored as they are.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ota.core.delta.format import TRANSFORM_RAW, TRANSFORM_SCALE, TRANSFORM_SUB, TRANSFORM_XOR

# Little-endian unsigned words: ONNX raw_data is little-endian on every host, and the transform must agree
# between a big server and a small device whatever their native order.
WORD_DTYPES: dict[int, np.dtype[np.unsignedinteger]] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}


_SIGN = np.uint32(0x80000000)


def _ordered(bits: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """Map float32 bit patterns, in place, to unsigned integers in the same order as the floats.

    Negative floats are bit-inverted, positive ones get the sign bit set: ``bits ^ (sign-spread | SIGN)``,
    branch-free and in place, which is what keeps apply fast.
    """
    spread = (bits.view(np.int32) >> 31).view(np.uint32)
    spread |= _SIGN
    bits ^= spread
    return bits


def _unordered(ordered: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """Inverse of :func:`_ordered`, in place."""
    spread = np.invert(ordered).view(np.int32)
    spread >>= 31
    spread_bits = spread.view(np.uint32)
    spread_bits |= _SIGN
    ordered ^= spread_bits
    return ordered


def predict(
    base: bytes | memoryview, scales: npt.NDArray[np.float32], *, first: int, inner: int
) -> npt.NDArray[np.uint32]:
    """The SCALE transform's prediction of a float32 chunk: base times its channel's scale, as bit patterns.

    Bit-exact on every platform: one IEEE float32 multiply per element (numpy never fuses it), and any
    non-finite product (a non-finite base always gives one; NaN payloads differ between CPUs) falls back to
    the base's own bits.

    Args:
        base: The base chunk (float32 little-endian).
        scales: One float32 scale per channel.
        first: Index of the chunk's first element in the tensor.
        inner: Elements per channel.

    Raises:
        ValueError: If the chunk reaches past the last channel (apply validates before calling).
    """
    values = np.frombuffer(base, dtype="<f4")
    if not values.size:
        return np.empty(0, dtype=np.uint32)
    first_channel, last_channel = first // inner, (first + values.size - 1) // inner
    if last_channel >= scales.size:
        raise ValueError("chunk reaches past the last channel")
    channel_scales = scales[first_channel : last_channel + 1].astype(np.float32)
    with np.errstate(all="ignore"):
        if first % inner == 0 and values.size % inner == 0:
            # Whole channels (how tensor_chunks cuts SCALE tensors): a broadcast, no per-element gather.
            product = np.multiply(values.reshape(-1, inner), channel_scales[:, None], dtype=np.float32)
            product = product.reshape(-1)
        else:
            # Elements of each channel in this chunk: the first and last may be cut by the chunk's edges.
            starts = np.maximum(np.arange(first_channel, last_channel + 1, dtype=np.int64) * inner, first)
            stops = np.minimum(starts - starts % inner + inner, first + values.size)
            product = np.multiply(values, np.repeat(channel_scales, stops - starts), dtype=np.float32)
        # One float64 sum is finite exactly when every product is (it cannot overflow): the cheap common case.
        all_finite = bool(np.isfinite(product.sum(dtype=np.float64)))
    bits: npt.NDArray[np.uint32] = product.view(np.uint32)
    if not all_finite:
        bits = np.where(np.isfinite(product), bits, values.view(np.uint32))
    return bits


def fit_channel_scales(
    new: bytes | memoryview, base: bytes | memoryview, channels: int
) -> npt.NDArray[np.float32]:
    """Least-squares scale per channel so that ``base * scale`` best predicts ``new`` (1.0 if undefined)."""
    x = np.frombuffer(base, dtype="<f4").astype(np.float64).reshape(channels, -1)
    y = np.frombuffer(new, dtype="<f4").astype(np.float64).reshape(channels, -1)
    with np.errstate(all="ignore"):
        scales = (x * y).sum(axis=1) / (x * x).sum(axis=1)
    scales = np.where(np.isfinite(scales) & (np.abs(scales) < 1e30), scales, 1.0)
    return scales.astype(np.float32)


def _zigzag32(delta: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    signed = delta.view(np.int32)
    return ((signed << 1) ^ (signed >> 31)).view(np.uint32)


def _unzigzag32(coded: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """Inverse of :func:`_zigzag32`, in place."""
    # -(coded & 1) in uint32 arithmetic: all ones for odd codes (negative deltas), zero for even ones.
    mask = coded & np.uint32(1)
    np.negative(mask, out=mask)
    coded >>= np.uint32(1)
    coded ^= mask
    return coded


def transform_words(
    new: bytes | memoryview,
    base: bytes | memoryview | None,
    *,
    transform: int,
    itemsize: int,
    scales: npt.NDArray[np.float32] | None = None,
    first: int = 0,
    inner: int = 1,
) -> npt.NDArray[np.unsignedinteger]:
    """Transform one chunk of a tensor into little-endian words (XOR, SUB or SCALE residuals, or RAW).

    Args:
        new: The new tensor's bytes for this chunk (a multiple of ``itemsize``).
        base: The base tensor's bytes for the same elements, or ``None`` for ``TRANSFORM_RAW``.
        transform: ``TRANSFORM_RAW``, ``TRANSFORM_XOR``, ``TRANSFORM_SUB`` or ``TRANSFORM_SCALE``.
        itemsize: Bytes per element (1, 2, 4 or 8; 4 for SCALE).
        scales: Per-channel scales (SCALE only).
        first: Index of the chunk's first element in the tensor (SCALE only).
        inner: Elements per channel (SCALE only).

    Raises:
        ValueError: On a size mismatch or missing base (writer bugs; make never passes patch input here).
    """
    dtype = WORD_DTYPES[itemsize]
    words = np.frombuffer(new, dtype=dtype)
    if transform == TRANSFORM_RAW:
        return words
    if base is None or len(base) != len(new):
        raise ValueError("XOR, SUB and SCALE need a base chunk of the same length")
    if transform == TRANSFORM_SCALE:
        if scales is None or itemsize != 4:
            raise ValueError("SCALE needs float32 elements and scales")
        prediction = _ordered(predict(base, scales, first=first, inner=inner))
        return _zigzag32(_ordered(words.astype(np.uint32)) - prediction)
    base_words = np.frombuffer(base, dtype=dtype)
    if transform == TRANSFORM_XOR:
        return np.bitwise_xor(words, base_words)
    return np.subtract(words, base_words, dtype=dtype)


def untransform_words(
    words: npt.NDArray[np.unsignedinteger],
    base: bytes | None,
    *,
    transform: int,
    itemsize: int,
    scales: npt.NDArray[np.float32] | None = None,
    first: int = 0,
    inner: int = 1,
) -> npt.NDArray[np.uint8]:
    """Inverse of :func:`transform_words`; works in place on ``words``, which the caller must own.

    Raises:
        ValueError: If the base does not match the chunk, or the transform is unknown.
    """
    dtype = WORD_DTYPES[itemsize]
    if transform != TRANSFORM_RAW:
        if base is None or len(base) != words.size * itemsize:
            raise ValueError("base chunk does not match the tensor chunk")
        if transform == TRANSFORM_SCALE:
            if scales is None or itemsize != 4:
                raise ValueError("SCALE needs float32 elements and scales")
            # All in place on arrays this function owns: apply's time is mostly these passes.
            prediction = _ordered(predict(base, scales, first=first, inner=inner))
            residual = _unzigzag32(words.view(np.uint32))
            residual += prediction
            words = _unordered(residual).view(dtype)
        elif transform == TRANSFORM_XOR:
            np.bitwise_xor(words, np.frombuffer(base, dtype=dtype), out=words)
        elif transform == TRANSFORM_SUB:
            np.add(words, np.frombuffer(base, dtype=dtype), out=words)
        else:
            raise ValueError(f"unknown transform {transform}")
    return words.view(np.uint8)


def split_planes(words: npt.NDArray[np.unsignedinteger], itemsize: int) -> list[bytes]:
    """Byte planes of little-endian words: plane k holds byte k of every word."""
    if itemsize == 1:
        return [words.tobytes()]
    matrix = words.astype(WORD_DTYPES[itemsize], copy=False).view(np.uint8).reshape(-1, itemsize)
    return [np.ascontiguousarray(matrix[:, plane]).tobytes() for plane in range(itemsize)]


def join_planes(planes: list[bytes], itemsize: int, count: int) -> npt.NDArray[np.unsignedinteger]:
    """Inverse of :func:`split_planes`: a fresh, writable array of ``count`` words.

    Raises:
        ValueError: If there are not ``itemsize`` planes of ``count`` bytes.
    """
    if len(planes) != itemsize or any(len(plane) != count for plane in planes):
        raise ValueError("plane sizes do not match the chunk")
    dtype = WORD_DTYPES[itemsize]
    if itemsize == 1:
        return np.frombuffer(planes[0], dtype=dtype).copy()
    matrix = np.empty((count, itemsize), dtype=np.uint8)
    for index, plane in enumerate(planes):
        matrix[:, index] = np.frombuffer(plane, dtype=np.uint8)
    return matrix.view(dtype).reshape(-1)


def forward_planes(
    new: bytes | memoryview,
    base: bytes | memoryview | None,
    *,
    transform: int,
    itemsize: int,
    scales: npt.NDArray[np.float32] | None = None,
    first: int = 0,
    inner: int = 1,
) -> list[bytes]:
    """Transform one chunk of a tensor into its byte planes (:func:`transform_words`, then split).

    Raises:
        ValueError: On a size mismatch or missing base.
    """
    words = transform_words(
        new, base, transform=transform, itemsize=itemsize, scales=scales, first=first, inner=inner
    )
    return split_planes(words, itemsize)


def inverse_planes(
    planes: list[bytes],
    base: bytes | None,
    *,
    transform: int,
    itemsize: int,
    count: int,
    scales: npt.NDArray[np.float32] | None = None,
    first: int = 0,
    inner: int = 1,
) -> npt.NDArray[np.uint8]:
    """Rebuild one chunk of a tensor from its planes (the inverse of :func:`forward_planes`).

    Returns:
        The chunk's bytes as a flat uint8 array.

    Raises:
        ValueError: If plane or base sizes do not match ``count`` (apply checks before calling).
    """
    words = join_planes(planes, itemsize, count)
    return untransform_words(
        words, base, transform=transform, itemsize=itemsize, scales=scales, first=first, inner=inner
    )


_RUN = 255  # a token of 255 zeros and no value; any smaller token k is k zeros, then one value


def sparse_encode(plane: bytes) -> tuple[bytes, bytes]:
    """Split a mostly-zero plane into zero-run tokens and its non-zero values.

    Token k < 255 means "k zeros, then the next value"; token 255 means "255 zeros". Zeros after the last
    value are implied by the plane's length, which the decoder knows.

    Returns:
        The tokens and the values, one byte each.
    """
    data = np.frombuffer(plane, dtype=np.uint8)
    where = np.flatnonzero(data)
    gaps = np.diff(where, prepend=-1) - 1
    runs, rest = np.divmod(gaps, _RUN)
    tokens = np.full(int(runs.sum()) + where.size, _RUN, dtype=np.uint8)
    tokens[np.cumsum(runs + 1) - 1] = rest
    return tokens.tobytes(), data[where].tobytes()


def sparse_decode(tokens: bytes, values: bytes, count: int) -> bytes:
    """Rebuild a plane of ``count`` bytes from :func:`sparse_encode`'s tokens and values.

    Raises:
        ValueError: If the tokens run past ``count`` or do not match the number of values.
    """
    token_array = np.frombuffer(tokens, dtype=np.uint8)
    carries_value = token_array < _RUN
    ends = np.cumsum(token_array.astype(np.int64) + carries_value)
    if ends.size and int(ends[-1]) > count:
        raise ValueError("sparse plane tokens run past the plane")
    if int(np.count_nonzero(carries_value)) != len(values):
        raise ValueError("sparse plane has a different number of values than its tokens announce")
    plane = np.zeros(count, dtype=np.uint8)
    plane[ends[carries_value] - 1] = np.frombuffer(values, dtype=np.uint8)
    return plane.tobytes()


def run_tokens(mask: npt.NDArray[np.bool_]) -> bytes:
    """Zero-run tokens (as in :func:`sparse_encode`) of a mask: where the true entries are."""
    tokens, _ = sparse_encode(mask.astype(np.uint8).tobytes())
    return tokens


def token_positions(tokens: bytes, count: int) -> npt.NDArray[np.int64]:
    """Positions (in a chunk of ``count`` entries) that :func:`run_tokens` tokens mark.

    Raises:
        ValueError: If the tokens run past ``count``.
    """
    token_array = np.frombuffer(tokens, dtype=np.uint8)
    carries_value = token_array < _RUN
    ends = np.cumsum(token_array.astype(np.int64) + carries_value)
    if ends.size and int(ends[-1]) > count:
        raise ValueError("word-sparse tokens run past the chunk")
    return ends[carries_value] - 1
