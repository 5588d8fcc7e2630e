"""Make delta patches and model-aware full compressions: the OTA server's half of ``ota.core.delta``.

``make_delta`` builds two candidates and keeps the smaller:

* **model-aware** (ONNX files, and external-data files next to their ``.onnx``): tensors located by walking
  the protobuf (``onnx_layout``) are matched to the base tensor of the same name, dtype and shape. Unchanged
  ones become a base copy; changed ones are XORed, subtracted, or predicted per channel (float32: base times
  a fitted per-channel scale, then the difference of order-preserving integer images), whichever a quick
  trial on a sample compresses best, or stored plainly for a new tensor; then split into byte planes and
  zstd-compressed plane by plane. Everything else (the protobuf "skeleton") becomes copies when unchanged in
  place; a changed gap becomes a copy of the prefix and suffix it shares with the base's gap and a literal of
  the middle, and literals are compressed by zstd with the base bytes they replace as dictionary.
* **generic**: the whole new file compressed by zstd with the whole base as a raw-content dictionary (what
  ``zstd --patch-from`` does), or plain zstd without a base.

Make holds both files in memory: it runs on the server. Only apply is bounded (see ``apply.py``).
"""

from __future__ import annotations

import hashlib
import lzma
import math
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import zstandard

from ota.core.delta import literal_model
from ota.core.delta.codecs import (
    WORD_DTYPES,
    fit_channel_scales,
    run_tokens,
    sparse_encode,
    split_planes,
    transform_words,
)
from ota.core.delta.errors import DeltaInputError, OnnxLayoutError
from ota.core.delta.format import (
    CHUNK_CHANGED_WORDS,
    CHUNK_DENSE,
    CHUNK_ELEMENTS,
    CHUNK_WORD_SPARSE,
    CODEC_GENERIC,
    CODEC_MODEL,
    LITERAL_MODEL,
    LITERAL_STORED,
    LITERAL_ZSTD,
    LZMA_FILTERS,
    LZMA_PRESET,
    PLANE_LZMA,
    PLANE_SPARSE,
    PLANE_STORED,
    PLANE_ZSTD,
    SECTION_STORED,
    SECTION_ZSTD,
    TRANSFORM_RAW,
    TRANSFORM_SCALE,
    TRANSFORM_SUB,
    TRANSFORM_XOR,
    LiteralDictionary,
    PatchHeader,
    encode_copy,
    encode_header,
    encode_literal,
    encode_tensor,
    encode_varint,
    literal_prime,
    parse_header,
    tensor_chunks,
)
from ota.core.delta.onnx_layout import ONNX_ITEMSIZE, TensorSpan, parse_onnx_layout
from ota.core.files import atomic_write_bytes

# Tensors smaller than this stay in the skeleton: per-plane records would cost more than they save, and the
# skeleton's zstd (with the base skeleton as dictionary) handles small, mostly unchanged arrays well.
MIN_TENSOR_BYTES = 512
ONNX_FLOAT = 1
# Planes: a fast trial decides between storing and compressing. Compressible planes that are not sparse
# (exponent bytes, noisy mid-mantissa bytes) are near-i.i.d. symbols: what wins there is entropy coding, not
# matching. zstd with matching effectively off (min_match 7 on a tiny hash table) is a Huffman coder: on
# ResNet-18 exponent planes it gives 0.332 of the plane against 0.329 for level 15 (order-0 entropy 0.331)
# in a hundredth of the time, and 0.413 for level 3, whose short matches only get in the way.
PLANE_TRIAL_LEVEL = 3
PLANE_STORE_RATIO = 0.985
# Planes at least this zero go to the sparse coding (format.PLANE_SPARSE) instead of the optimal parser.
PLANE_SPARSE_ZEROS = 0.5
PLANE_SPARSE_LEVEL = 3
# Chunks where at most this share of transformed words changed also try the word-sparse coding.
WORD_SPARSE_MAX_CHANGED = 0.7
# Skeleton literals and the control stream are small: always the strongest level.
LITERAL_LEVEL = 19
# The literal model (literal_model.py) costs up to 0.3 s of apply CPU, against milliseconds for zstd: it is
# used when it makes the whole patch at least 1/MODEL_MIN_GAIN smaller (a metadata-only patch: a fifth; a
# fine-tune's changed skeleton: a few hundredths of a percent, not worth it).
MODEL_MIN_GAIN = 100
# The header's size for that estimate: two digests and a few varints.
HEADER_ESTIMATE = 80
# The generic candidate runs on whole files, like `zstd -19 --patch-from --long`. A fast estimate comes first
# (level 3 with long-distance matching, a second or so on 45 MB); the strong pass runs only when that
# estimate is within 5 % of the model-aware candidate: on model files a strong pass gains less than that
# (ResNet-18 retrained from scratch: level 3 gives 92.2 % of the file, ours 83.1 %; a strong pass there took
# 20 s to lose anyway).
GENERIC_FAST_LEVEL = 3
GENERIC_LEVEL = 19
# Level 19 over a window of base + new takes minutes beyond this size; big files get a still-strong level.
GENERIC_BIG_BYTES = 32 << 20
GENERIC_BIG_LEVEL = 12
GENERIC_STRONG_MARGIN = 1.05
# The generic edit candidate (copy the common prefix and suffix, send the middle) is tried when the middle is
# at most this big: a small edit of a non-model file, or of a model whose layout does not parse.
EDIT_MAX_LITERAL = 1 << 16
MAX_WINDOW_LOG = 31
# External-data lookup reads sibling .onnx files: few, and small ones (the weights live in the data file).
MAX_SIBLING_MODELS = 16
MAX_SIBLING_BYTES = 64 << 20


@dataclass(frozen=True)
class _Copy:
    base_offset: int
    length: int


@dataclass(frozen=True)
class _Literal:
    data: bytes


@dataclass(frozen=True)
class _Tensor:
    transform: int
    itemsize: int
    count: int
    base_offset: int | None
    new_offset: int
    scales: npt.NDArray[np.float32] | None = None
    row: int = 1  # elements per slice of the first dimension (a classifier row, a conv filter)

    @property
    def inner(self) -> int:
        return self.count // self.scales.size if self.scales is not None else 1


_Op = _Copy | _Literal | _Tensor


def _read(path: Path, role: str) -> bytes:
    """Map ``path`` read-only instead of copying it onto the heap (empty files are read).

    ``build_patch`` slices, iterates, hashes and buffers its inputs, which a ``memoryview`` of an ``mmap``
    supports like ``bytes`` (iterating gives ints); the mapped pages are file-backed, so the kernel can drop
    them under pressure. Measured on a
    40 MB ONNX model: traced heap peak 160 MB (4.0x) with two ``read_bytes`` copies, 80 MB (2.0x) mapped,
    with byte-identical patches.
    """
    try:
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return b""
            return cast(bytes, memoryview(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)))
    except OSError as exc:
        raise DeltaInputError(f"cannot read {role} file {path}: {exc.strerror or exc}") from exc


def _window_log(size: int) -> int:
    return max(10, min(MAX_WINDOW_LOG, math.ceil(math.log2(max(size, 1)))))


def _zstd(level: int, **overrides: int) -> zstandard.ZstdCompressor:
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        write_content_size=0,
        write_checksum=0,
        write_dict_id=0,
        **overrides,
    )
    return zstandard.ZstdCompressor(compression_params=params)


def _huffman() -> zstandard.ZstdCompressor:
    """zstd reduced to its Huffman literal coder (see PLANE_TRIAL_LEVEL's comment for why)."""
    params = zstandard.ZstdCompressionParameters(
        compression_level=1,
        strategy=1,
        min_match=7,
        window_log=18,
        hash_log=10,
        chain_log=10,
        search_log=1,
        target_length=0,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        write_content_size=0,
        write_checksum=0,
        write_dict_id=0,
    )
    return zstandard.ZstdCompressor(compression_params=params)


@dataclass(frozen=True)
class _Sections:
    """A patch body: each section with the method it is written with."""

    control: bytes
    control_method: int
    literals: bytes
    literal_method: int
    data: bytes


def _smallest(candidates: list[tuple[int, bytes]]) -> tuple[int, bytes]:
    """The shortest (method, payload); on a tie the lowest method (stored), cheapest to apply."""
    return min(candidates, key=lambda candidate: (len(candidate[1]), candidate[0]))


def _zstd_literals(literals: bytes, dictionary: bytes, *, level: int, ldm: bool) -> bytes:
    """zstd of the literal stream, ``dictionary`` as raw content (``--patch-from`` for the generic codec)."""
    total = len(literals) + len(dictionary)
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        source_size=len(literals),
        dict_size=len(dictionary),
        window_log=_window_log(total),
        enable_ldm=1 if ldm else 0,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        write_content_size=0,
        write_checksum=0,
        write_dict_id=0,
    )
    zdict = (
        zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        if dictionary
        else None
    )
    return zstandard.ZstdCompressor(dict_data=zdict, compression_params=params).compress(literals)


def _choose_literals(
    plain: tuple[int, bytes], model: Callable[[], bytes] | None, rest: int
) -> tuple[int, bytes]:
    """The smaller literal section, but the model coder only where it is worth its apply time.

    Args:
        plain: The best of stored and zstd, as (method, payload).
        model: Codes the literals with the literal model, or ``None`` when they are too long for it.
        rest: Bytes of the patch outside the literal section.
    """
    # The model saves at most the whole plain section: skip it (0.1 s of make) when even that is too little.
    if model is None or len(plain[1]) * MODEL_MIN_GAIN < rest:
        return plain
    coded = model()
    saving = len(plain[1]) - len(coded)
    if saving > 0 and saving * MODEL_MIN_GAIN >= rest + len(coded):
        return LITERAL_MODEL, coded
    return plain


def _control(control: bytes) -> tuple[int, bytes]:
    if not control:
        return SECTION_STORED, b""
    return _smallest([(SECTION_STORED, control), (SECTION_ZSTD, _zstd(LITERAL_LEVEL).compress(control))])


def _encode_plane(plane: bytes, *, lzma_too: bool = False) -> bytes:
    """One plane record: the smallest of stored, zstd, sparse and (``lzma_too``) LZMA coding."""
    trial = _zstd(PLANE_TRIAL_LEVEL).compress(plane)
    candidates = [(PLANE_STORED, plane), (PLANE_ZSTD, trial)]
    zeros = len(plane) - int(np.count_nonzero(np.frombuffer(plane, dtype=np.uint8)))
    if zeros >= len(plane) * PLANE_SPARSE_ZEROS:
        tokens, values = sparse_encode(plane)
        token_frame = _zstd(PLANE_SPARSE_LEVEL).compress(tokens)
        value_frame = _zstd(PLANE_SPARSE_LEVEL).compress(values)
        candidates.append((PLANE_SPARSE, encode_varint(len(token_frame)) + token_frame + value_frame))
    elif len(trial) < len(plane) * PLANE_STORE_RATIO:
        candidates.append((PLANE_ZSTD, _huffman().compress(plane)))
        if lzma_too:
            # LZMA is slow to make (a few MB/s): only for dense one-byte planes, where it wins.
            filters = [dict(LZMA_FILTERS[0], preset=LZMA_PRESET)]
            candidates.append((PLANE_LZMA, lzma.compress(plane, format=lzma.FORMAT_RAW, filters=filters)))
    method, payload = min(candidates, key=lambda candidate: (len(candidate[1]), candidate[0]))
    return bytes([method]) + encode_varint(len(payload)) + payload


def _encode_chunk(new_chunk: memoryview, base_chunk: memoryview | None, op: _Tensor, first: int) -> bytes:
    """One chunk's data: dense planes, or (when most words are zero) a change map plus the changed words."""
    words = transform_words(
        new_chunk,
        base_chunk,
        transform=op.transform,
        itemsize=op.itemsize,
        scales=op.scales,
        first=first,
        inner=op.inner,
    )
    dense = bytes([CHUNK_DENSE]) + b"".join(
        _encode_plane(plane, lzma_too=op.itemsize == 1) for plane in split_planes(words, op.itemsize)
    )
    candidates = [dense]
    changed = words != 0
    if np.count_nonzero(changed) <= words.size * WORD_SPARSE_MAX_CHANGED:
        candidates.append(_sparse_chunk(CHUNK_WORD_SPARSE, changed, words, op.itemsize))
        if base_chunk is not None:
            # Only the changed words, as their new values (rows retrained from scratch in a frozen tensor).
            new_words = np.frombuffer(new_chunk, dtype=WORD_DTYPES[op.itemsize])
            moved = new_words != np.frombuffer(base_chunk, dtype=WORD_DTYPES[op.itemsize])
            candidates.append(_sparse_chunk(CHUNK_CHANGED_WORDS, moved, new_words, op.itemsize))
            if op.row > 1:
                # The same, widened to whole rows: the coder then sees rows at a fixed stride, which it
                # exploits (ResNet-18 INT8 head: 33.1 kB for whole retrained rows, 35.1 kB for changed words).
                row_of = np.arange(first, first + new_words.size, dtype=np.int64) // op.row
                rows = np.isin(row_of, np.unique(row_of[moved]))
                candidates.append(_sparse_chunk(CHUNK_CHANGED_WORDS, rows, new_words, op.itemsize))
    return min(candidates, key=len)


def _sparse_chunk(
    mode: int,
    marked: npt.NDArray[np.bool_],
    words: npt.NDArray[np.unsignedinteger],
    itemsize: int,
) -> bytes:
    tokens = run_tokens(marked)
    record = bytes([mode]) + encode_varint(len(tokens)) + _encode_plane(tokens)
    if np.any(marked):
        record += b"".join(
            _encode_plane(plane, lzma_too=itemsize == 1) for plane in split_planes(words[marked], itemsize)
        )
    return record


def _trial_size(new: memoryview, base: memoryview, op: _Tensor) -> int:
    """Coded size of a sample (a chunk from the tensor's middle) under ``op``'s transform."""
    sample = min(op.count, CHUNK_ELEMENTS // 2)
    first = (op.count - sample) // 2
    start, stop = first * op.itemsize, (first + sample) * op.itemsize
    base_chunk = base[start:stop] if op.transform != TRANSFORM_RAW else None
    return len(_encode_chunk(new[start:stop], base_chunk, op, first))


def _choose_tensor_op(new: memoryview, base: memoryview, span: TensorSpan, base_offset: int) -> _Tensor:
    """Pick RAW, XOR, SUB or (float32 with channels) SCALE by compressing a sample of each."""
    count = span.length // span.itemsize
    row = count // span.dims[0] if span.dims and span.dims[0] and count % span.dims[0] == 0 else 1
    candidates = [
        _Tensor(transform, span.itemsize, count, base_offset, span.offset, row=row)
        for transform in (TRANSFORM_XOR, TRANSFORM_SUB, TRANSFORM_RAW)
    ]
    channels = span.dims[0] if span.dims else 0
    # Per-channel scales cost 4 bytes a channel: only worth it when channels hold a fair number of weights.
    if (
        span.data_type == ONNX_FLOAT
        and len(span.dims) >= 2
        and channels
        and count % channels == 0
        and count // channels >= 8
    ):
        scales = fit_channel_scales(new, base, channels)
        candidates.insert(0, _Tensor(TRANSFORM_SCALE, 4, count, base_offset, span.offset, scales, row))
    sizes = [_trial_size(new, base, op) for op in candidates]
    best = candidates[sizes.index(min(sizes))]
    if best.transform == TRANSFORM_RAW:
        return _Tensor(TRANSFORM_RAW, span.itemsize, count, None, span.offset)
    return best


def _common_prefix(left: bytes, right: bytes, limit: int) -> int:
    """Length of the common prefix of ``left`` and ``right``, at most ``limit`` (compared in blocks)."""
    length = 0
    block = 4096
    while length < limit:
        step = min(block, limit - length)
        if left[length : length + step] == right[length : length + step]:
            length += step
            continue
        if step == 1:
            break
        block = max(1, step // 2)
    return length


def _common_suffix(left: bytes, right: bytes, limit: int) -> int:
    """Length of the common suffix of ``left`` and ``right``, at most ``limit`` (compared in blocks)."""
    length = 0
    block = 4096
    while length < limit:
        step = min(block, limit - length)
        if (
            left[len(left) - length - step : len(left) - length]
            == right[len(right) - length - step : len(right) - length]
        ):
            length += step
            continue
        if step == 1:
            break
        block = max(1, step // 2)
    return length


def _big(spans: list[TensorSpan]) -> list[TensorSpan]:
    return [span for span in spans if span.length >= MIN_TENSOR_BYTES]


def _valid(spans: list[TensorSpan], length: int) -> list[TensorSpan]:
    """Big-enough spans inside the file, sorted, not overlapping (external layouts come from another file)."""
    kept: list[TensorSpan] = []
    end = 0
    for span in sorted(_big(spans), key=lambda item: item.offset):
        if span.offset >= end and span.offset + span.length <= length:
            kept.append(span)
            end = span.offset + span.length
    return kept


def _plan_model(
    new: bytes, base: bytes | None, new_spans: list[TensorSpan], base_spans: list[TensorSpan]
) -> list[_Op]:
    """Plan the operations of a model-aware patch from the tensor layouts of both files."""
    new_spans = _valid(new_spans, len(new))
    base_by_name: dict[str, TensorSpan] = {}
    if base is not None:
        for span in _valid(base_spans, len(base)):
            base_by_name.setdefault(span.name, span)

    ops: list[_Op] = []
    base_cursor = 0

    def skeleton(start: int, stop: int, base_stop: int | None) -> None:
        nonlocal base_cursor
        if start >= stop:
            return
        piece = new[start:stop]
        # Unchanged-in-place skeleton becomes a copy, so a metadata-only change costs a few bytes, not
        # a literal per gap between tensors.
        if base is not None and base[base_cursor : base_cursor + len(piece)] == piece:
            ops.append(_Copy(base_cursor, len(piece)))
            base_cursor += len(piece)
            return
        if base is None or base_stop is None or base_stop < base_cursor:
            ops.append(_Literal(piece))
            return
        # A changed gap is usually an edit in the middle of the base's matching gap (a doc string, a new
        # metadata entry): copy the common prefix and suffix, and send only the middle as a literal. The
        # literal then holds just the new bytes, which matters when they are all the patch carries.
        old = base[base_cursor:base_stop]
        limit = min(len(old), len(piece))
        prefix = _common_prefix(old, piece, limit)
        suffix = _common_prefix(old[::-1], piece[::-1], limit - prefix)
        if prefix:
            ops.append(_Copy(base_cursor, prefix))
        if len(piece) - prefix - suffix:
            ops.append(_Literal(piece[prefix : len(piece) - suffix]))
        if suffix:
            ops.append(_Copy(base_stop - suffix, suffix))
        base_cursor = base_stop

    cursor = 0
    for span in new_spans:
        match = base_by_name.get(span.name)
        skeleton(cursor, span.offset, match.offset if match is not None else None)
        cursor = span.offset + span.length
        if (
            base is not None
            and match is not None
            and (match.data_type, match.dims, match.length) == (span.data_type, span.dims, span.length)
        ):
            if base[match.offset : match.offset + match.length] == new[span.offset : cursor]:
                ops.append(_Copy(match.offset, match.length))
                base_cursor = match.offset + match.length
                continue
            view_new = memoryview(new)[span.offset : cursor]
            view_base = memoryview(base)[match.offset : match.offset + match.length]
            ops.append(_choose_tensor_op(view_new, view_base, span, match.offset))
            # The skeleton after this tensor most likely follows the base tensor, whatever the transform.
            base_cursor = match.offset + match.length
        else:
            ops.append(_Tensor(TRANSFORM_RAW, span.itemsize, span.length // span.itemsize, None, span.offset))
    skeleton(cursor, len(new), len(base) if base is not None else None)
    return _coalesce(ops)


def _coalesce(ops: list[_Op]) -> list[_Op]:
    merged: list[_Op] = []
    for op in ops:
        last = merged[-1] if merged else None
        if (
            isinstance(op, _Copy)
            and isinstance(last, _Copy)
            and last.base_offset + last.length == op.base_offset
        ):
            merged[-1] = _Copy(last.base_offset, last.length + op.length)
        elif isinstance(op, _Literal) and isinstance(last, _Literal):
            merged[-1] = _Literal(last.data + op.data)
        else:
            merged.append(op)
    return merged


def _encode_model(new: bytes, base: bytes | None, ops: list[_Op]) -> _Sections:
    """Serialise planned ops into their sections."""
    control = bytearray()
    dictionary = LiteralDictionary(len(base) if base is not None else 0)
    literal_parts: list[bytes] = []
    # Chunks to encode, in data-section order; raw bytes (a SCALE tensor's scales) go in as they are.
    jobs: list[tuple[memoryview, memoryview | None, _Tensor, int] | bytes] = []
    new_view = memoryview(new)
    base_view = memoryview(base) if base is not None else None
    cursor = 0
    for op in ops:
        if isinstance(op, _Copy):
            control += encode_copy(op.length, op.base_offset - cursor)
            cursor = op.base_offset + op.length
            dictionary.base_range(op.base_offset, cursor)
        elif isinstance(op, _Literal):
            control += encode_literal(len(op.data))
            literal_parts.append(op.data)
            dictionary.literal()
        else:
            offset_delta = None if op.base_offset is None else op.base_offset - cursor
            control += encode_tensor(op.transform, op.itemsize, op.count, offset_delta)
            if op.base_offset is not None:
                cursor = op.base_offset + op.count * op.itemsize
                dictionary.base_range(op.base_offset, cursor)
            if op.scales is not None:
                jobs.append(encode_varint(op.scales.size) + op.scales.astype("<f4").tobytes())
            for first, count in tensor_chunks(op.count, op.inner, op.itemsize):
                start = op.new_offset + first * op.itemsize
                stop = start + count * op.itemsize
                base_chunk = None
                if op.base_offset is not None and base_view is not None:
                    base_start = op.base_offset + first * op.itemsize
                    base_chunk = base_view[base_start : base_start + count * op.itemsize]
                jobs.append((new_view[start:stop], base_chunk, op, first))
    # zstd releases the GIL, so threads compress planes in parallel; map keeps the order.
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        data = b"".join(pool.map(lambda job: job if isinstance(job, bytes) else _encode_chunk(*job), jobs))
    control_method, control_section = _control(bytes(control))
    literal_method, literals = _literal_section(
        b"".join(literal_parts), base, dictionary.finish(), HEADER_ESTIMATE + len(control_section) + len(data)
    )
    return _Sections(control_section, control_method, literals, literal_method, data)


def _literal_section(
    literals: bytes,
    base: bytes | None,
    ranges: list[tuple[int, int]],
    rest: int,
    *,
    level: int = LITERAL_LEVEL,
    ldm: bool = False,
) -> tuple[int, bytes]:
    """The literal section for ``literals``: stored, zstd, or the literal model.

    Args:
        literals: The literal stream.
        base: The base, for the dictionary and the model's prime.
        ranges: The dictionary ranges the operations imply (see ``format.LiteralDictionary``).
        rest: Bytes of the patch outside the literal section.
        level: zstd level.
        ldm: Whether zstd uses long-distance matching.
    """
    if not literals:
        return LITERAL_STORED, b""
    base = base or b""
    whole = ranges == [(0, len(base))]  # the generic codec: no need to copy the whole base
    dict_bytes = base if whole else b"".join(base[offset : offset + length] for offset, length in ranges)
    plain = _smallest(
        [
            (LITERAL_STORED, literals),
            (LITERAL_ZSTD, _zstd_literals(literals, dict_bytes, level=level, ldm=ldm)),
        ]
    )

    def model() -> bytes:
        prime_ranges = literal_prime(ranges, len(base), literal_model.MAX_PRIME)
        prime = b"".join(base[offset : offset + length] for offset, length in prime_ranges)
        return literal_model.encode(literals, prime)

    return _choose_literals(plain, model if len(literals) <= literal_model.MAX_LITERAL else None, rest)


def _encode_generic(new: bytes, base: bytes | None, *, level: int) -> _Sections:
    """One literal replacing the whole base (the dictionary rule makes the whole base its dictionary)."""
    control = encode_literal(len(new)) if new else b""
    ranges = [(0, len(base))] if base else []
    ldm = len(new) + len(base or b"") > 1 << 24
    control_method, control_section = _control(control)
    literal_method, literals = _literal_section(
        new, base, ranges, HEADER_ESTIMATE + len(control_section), level=level, ldm=ldm
    )
    return _Sections(control_section, control_method, literals, literal_method, b"")


def _plan_edit(new: bytes, base: bytes) -> list[_Op] | None:
    """Copy the prefix and suffix ``new`` shares with ``base``, a literal for the middle: for small edits.

    Returns:
        The operations, or ``None`` when the middle is too big for this to beat the generic codec.
    """
    limit = min(len(base), len(new))
    prefix = _common_prefix(base, new, limit)
    suffix = _common_suffix(base, new, limit - prefix)
    middle = new[prefix : len(new) - suffix]
    if len(middle) > EDIT_MAX_LITERAL:
        return None
    ops: list[_Op] = []
    if prefix:
        ops.append(_Copy(0, prefix))
    if middle:
        ops.append(_Literal(middle))
    if suffix:
        ops.append(_Copy(len(base) - suffix, suffix))
    return ops


def _assemble(codec: int, new: bytes, base: bytes | None, sections: _Sections) -> bytes:
    header = encode_header(
        codec=codec,
        base_sha256=hashlib.sha256(base).digest() if base is not None else None,
        base_length=len(base) if base is not None else None,
        result_sha256=hashlib.sha256(new).digest(),
        result_length=len(new),
        control_length=len(sections.control),
        literal_length=len(sections.literals),
        control_method=sections.control_method,
        literal_method=sections.literal_method,
    )
    return header + sections.control + sections.literals + sections.data


def _inline_layout(data: bytes) -> list[TensorSpan] | None:
    try:
        return parse_onnx_layout(data).tensors
    except OnnxLayoutError:
        return None


def external_layout(data_file: Path) -> list[TensorSpan] | None:
    """Tensor layout of an ONNX external-data file, read from the ``.onnx`` beside it that references it.

    ONNX models saved with external data keep their weights in a separate file (``model.onnx.data``) and
    name it, with offset and length per tensor, in the ``.onnx``. That file is what changes between
    releases, so deltas of it should be tensor-aware too: when ``data_file`` has a sibling ``.onnx`` that
    points at it, its tensors are located from there.

    Returns:
        The spans, or ``None`` when no sibling model references ``data_file``.
    """
    try:
        siblings = sorted(data_file.parent.glob("*.onnx"))
    except OSError:
        return None
    for sibling in siblings[:MAX_SIBLING_MODELS]:
        try:
            if sibling.stat().st_size > MAX_SIBLING_BYTES:
                continue
            layout = parse_onnx_layout(sibling.read_bytes())
        except (OSError, OnnxLayoutError):
            continue
        spans = []
        for tensor in layout.external:
            itemsize = ONNX_ITEMSIZE.get(tensor.data_type)
            if tensor.location != data_file.name or itemsize is None:
                continue
            length = tensor.length if tensor.length is not None else math.prod(tensor.dims) * itemsize
            if length > 0 and length % itemsize == 0:
                spans.append(
                    TensorSpan(tensor.name, tensor.data_type, tensor.dims, tensor.offset, length, itemsize)
                )
        if spans:
            return spans
    return None


def build_patch(
    base: bytes | None,
    new: bytes,
    *,
    new_spans: list[TensorSpan] | None = None,
    base_spans: list[TensorSpan] | None = None,
) -> bytes:
    """Build the smallest patch for ``new`` given ``base`` (or a full compression when ``base`` is None).

    Args:
        base: The base file's bytes, or ``None``.
        new: The new file's bytes.
        new_spans: Tensor layout of ``new`` when it is not itself an ONNX file (external data).
        base_spans: Tensor layout of ``base``, likewise.

    Returns:
        The patch bytes (model-aware when a tensor layout is known and that is smaller, else generic).

    Raises:
        DeltaError: Never for well-formed inputs; only writer bugs would raise.
    """
    candidates = [_assemble(CODEC_GENERIC, new, base, _encode_generic(new, base, level=GENERIC_FAST_LEVEL))]
    edit = _plan_edit(new, base) if base is not None else None
    if edit is not None:
        candidates.append(_assemble(CODEC_GENERIC, new, base, _encode_model(new, base, edit)))
    new_spans = new_spans if new_spans is not None else _inline_layout(new)
    if base is not None and base_spans is None:
        base_spans = _inline_layout(base)
    if new_spans is not None:
        ops = _plan_model(new, base, new_spans, base_spans or [])
        candidates.append(_assemble(CODEC_MODEL, new, base, _encode_model(new, base, ops)))
    if len(candidates[0]) < GENERIC_STRONG_MARGIN * min(len(candidate) for candidate in candidates):
        big = len(new) + len(base or b"") > GENERIC_BIG_BYTES
        level = GENERIC_BIG_LEVEL if big else GENERIC_LEVEL
        candidates.append(_assemble(CODEC_GENERIC, new, base, _encode_generic(new, base, level=level)))
    return min(candidates, key=len)


def _atomic_write(path: Path, payload: bytes) -> None:
    try:
        atomic_write_bytes(path.absolute(), payload)
    except OSError as exc:
        raise DeltaInputError(f"cannot write patch {path}: {exc.strerror or exc}") from exc


def make_delta(base: Path | None, new: Path, out: Path) -> PatchHeader:
    """Make a patch that turns ``base`` into ``new`` (or a full model-aware compression when base is None).

    Args:
        base: The file devices already have, or ``None`` for a full download.
        new: The file to deliver.
        out: Where to write the patch (written to a temp file, then renamed into place).

    Returns:
        The header of the written patch.

    Raises:
        DeltaInputError: If ``base`` or ``new`` cannot be read, or ``out`` cannot be written.
    """
    new_bytes = _read(new, "new")
    base_bytes = _read(base, "base") if base is not None else None
    new_spans = base_spans = None
    if _inline_layout(new_bytes) is None:
        # Not a model itself: perhaps the external-data file of one (see external_layout).
        new_spans = external_layout(new)
        base_spans = external_layout(base) if base is not None and new_spans is not None else None
    patch = build_patch(base_bytes, new_bytes, new_spans=new_spans, base_spans=base_spans)
    _atomic_write(out, patch)
    return parse_header(patch, file_length=len(patch))


def compress_full(new: Path, out: Path) -> PatchHeader:
    """Compress ``new`` without a base, model-aware when it is ONNX (same as ``make_delta(None, new, out)``).

    Raises:
        DeltaInputError: If ``new`` cannot be read or ``out`` cannot be written.
    """
    return make_delta(None, new, out)
