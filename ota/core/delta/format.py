"""The EdgeFleet delta patch format (version 2): header, constants and parsers shared by make and apply.

Sits at the bottom of ``ota.core.delta``: pure stdlib, no I/O beyond reading a header, so both the OTA server
(which writes patches) and the edge agent (which reads them) share exactly one definition.

Every byte of framing counts for the smallest patches (a metadata-only release is a hundred-odd bytes of new
text next to two 32-byte digests), so the header is packed: one flags byte carries the codec and the
section methods, lengths are unsigned LEB128 varints, and the data section's length is implied.

Header::

    magic          2 bytes  b"EF"
    version        1 byte   FORMAT_VERSION (3; version 2, with whole 32-byte digests, is still read; version 1
                            patches, magic b"EFDL", are refused by name)
    flags          1 byte   bits 0-1: codec, CODEC_MODEL (tensor-aware) or CODEC_GENERIC (no tensor ops)
                            bit 2: the patch has a base
                            bits 3-4: literal section method (LITERAL_STORED, LITERAL_ZSTD, LITERAL_MODEL)
                            bit 5: the control section is zstd-compressed (else stored)
                            bits 6-7: zero
    result_sha256  8 bytes  the first DIGEST_BYTES of the result's sha256
    result_length  varint
    base_sha256    8 bytes  only with a base: the first DIGEST_BYTES of the base's sha256
    base_length    varint   only with a base: zigzag(base_length - result_length)
    control_length varint   bytes of the control section
    literal_length varint   bytes of the literal section
    (the tensor data section is the rest of the file)

The digests are truncated (version 3; version 2 carried all 32 bytes of each) because they only catch
accidents: a patch applied to the wrong base, or a rebuild gone wrong. They cannot authenticate anything,
since whoever writes a patch writes its digests too; authenticity comes from the signed TUF metadata, which
names the patch's whole sha256 and length and the result's whole sha256, and the agent checks the rebuilt
model against the latter. For an accident a 64-bit tag misses one case in 2**64. The 48 bytes saved were
the one cost a generic tool (``zstd --patch-from``, xdelta3) does not pay, and on a metadata-only release,
where a patch is a hundred-odd bytes of new text, they made ours lose to zstd on small models.

zstd frames in patches are magic-less (``zstandard.FORMAT_ZSTD1_MAGICLESS``), without checksum, content
size or dictionary id: small patches are all overhead otherwise.

Control section = operations until the output holds ``result_length`` bytes, then nothing. Each starts
with a varint ``length << 2 | kind`` (length at least 1, so every operation makes progress)::

    OP_COPY_NEXT  (length)                          copy base bytes at the cursor; cursor += length
    OP_COPY       (length), zigzag(offset - cursor) copy base bytes at offset; cursor = end of the range
    OP_LITERAL    (length)                          the next bytes of the literal stream
    OP_TENSOR     (element count), a byte           one tensor, rebuilt chunk by chunk from the data
                  transform << 2 | log2(itemsize),  section (and the base tensor unless RAW);
                  [zigzag(offset - cursor) unless   cursor = end of the base tensor
                  RAW]

Literal section: one stream, all literals in order. LITERAL_ZSTD compresses it with a raw-content dictionary
made of the base bytes each literal replaces (see :class:`LiteralDictionary`), so a changed protobuf
skeleton costs only its changes; for the generic codec's single literal that is the whole base: ``zstd
--patch-from``. LITERAL_MODEL codes a short stream (at most ``literal_model.MAX_LITERAL`` bytes) with the
context-mixing model of ``literal_model``, primed with :func:`literal_prime`.

Data section: for each OP_TENSOR, for TRANSFORM_SCALE first ``channels`` (varint) and that many float32
scales; then for each chunk (see :func:`tensor_chunks`) a mode byte: CHUNK_DENSE, then for each byte plane
(``itemsize`` planes, plane k holding byte k of every element, little-endian) a plane record; or
CHUNK_WORD_SPARSE, then the token count (varint), a plane record of zero-run tokens marking the non-zero
transformed words (as in ``codecs.run_tokens``), and, if any, ``itemsize`` plane records of those words only;
or CHUNK_CHANGED_WORDS, laid out like CHUNK_WORD_SPARSE, where the map marks the words that differ from the
base and the planes hold their new values.
A plane record is: method (1 byte: PLANE_LZMA,
PLANE_STORED, PLANE_ZSTD or PLANE_SPARSE), length, payload. A sparse payload is the length of its token
frame (varint), the token frame, then the value frame; see ``codecs.sparse_encode``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ota.core.delta.errors import DeltaInputError, PatchCorruptError, PatchFormatError

MAGIC = b"EF"
FORMAT_VERSION = 3
# Version 2: the same layout with whole (32-byte) digests; read, never written.
_FORMAT_V2 = 2
#: Bytes of each sha256 a version-3 header keeps (see the module docstring).
DIGEST_BYTES = 8
_DIGEST_BYTES_V2 = 32
# Version 1 began with a four-byte magic; recognised only to name it in the error.
_MAGIC_V1 = b"EFDL"

CODEC_MODEL = 1
CODEC_GENERIC = 2
CODEC_NAMES: dict[int, str] = {CODEC_MODEL: "model-aware", CODEC_GENERIC: "generic"}

_FLAG_CODEC_MASK = 0x03
_FLAG_HAS_BASE = 0x04
_FLAG_LITERAL_SHIFT = 3
_FLAG_LITERAL_MASK = 0x18
_FLAG_CONTROL_ZSTD = 0x20
_FLAG_RESERVED = 0xC0

OP_COPY_NEXT = 0
OP_COPY = 1
OP_LITERAL = 2
OP_TENSOR = 3
_OP_KIND_BITS = 2

TRANSFORM_RAW = 0  # plane-shuffled new tensor, no base needed
TRANSFORM_XOR = 1  # new XOR base (as little-endian unsigned words), then plane-shuffled
TRANSFORM_SUB = 2  # new - base modulo 2**bits (as little-endian unsigned words), then plane-shuffled
# float32 only: base scaled per output channel (first dimension), then the difference of order-preserving
# integer images of new and prediction, zigzag-coded. Fine-tunes of BatchNorm-folded convolutions move whole
# channels by a common factor; predicting it leaves only the small per-weight update.
TRANSFORM_SCALE = 3
TRANSFORM_NAMES: dict[int, str] = {
    TRANSFORM_RAW: "raw",
    TRANSFORM_XOR: "xor",
    TRANSFORM_SUB: "sub",
    TRANSFORM_SCALE: "scale",
}

PLANE_STORED = 0
PLANE_ZSTD = 1
# Mostly-zero planes (the high bytes of small deltas, int8 weights that barely moved): zero-run tokens and
# the non-zero values as two zstd frames. zstd's Huffman literals cannot go below a bit a byte, run tokens
# can: 18 % smaller than zstd -15 on ResNet-18 INT8 fine-tune deltas, and twenty times faster to make.
PLANE_SPARSE = 2
# Raw LZMA2 (stdlib ``lzma``) with LZMA_FILTERS: its adaptive range coder beats Huffman on int8 weights
# (ResNet-18 head-only INT8 retrain: 33.1 kB against 38.0 kB for zstd -19 on the retrained rows). Tried on
# one-byte tensors only, where bsdiff and HDiffPatch (LZMA) are strongest; the decoder's dictionary is fixed
# here, not taken from the patch, so a patch cannot make it allocate more.
PLANE_LZMA = 3
LZMA_FILTERS: tuple[dict[str, int], ...] = (
    {"id": 0x21, "dict_size": 1 << 20, "lc": 3, "lp": 0, "pb": 0},  # 0x21 = lzma.FILTER_LZMA2
)
LZMA_PRESET = 6

# Word-sparse chunks: when most transformed words are zero (a head-only retrain leaves whole rows and
# columns bit-identical), one shared map of where the changes are beats each byte plane mapping its own.
CHUNK_DENSE = 0
CHUNK_WORD_SPARSE = 1
# Like CHUNK_WORD_SPARSE, but the changed words are stored as their new values, not transformed: for rows
# retrained from scratch inside an otherwise frozen tensor (a head-only retrain), the new values compress
# better than their XOR with unrelated old ones. Needs a base tensor (not with TRANSFORM_RAW).
CHUNK_CHANGED_WORDS = 2

SECTION_STORED = 0
SECTION_ZSTD = 1
# Literal section methods (the control section is SECTION_STORED or SECTION_ZSTD).
LITERAL_STORED = SECTION_STORED
LITERAL_ZSTD = SECTION_ZSTD
LITERAL_MODEL = 2
SECTION_NAMES: dict[int, str] = {LITERAL_STORED: "stored", LITERAL_ZSTD: "zstd", LITERAL_MODEL: "model"}

ITEMSIZES = (1, 2, 4, 8)  # OP_TENSOR stores log2 of the item size

# Tensors are rebuilt in chunks so apply holds a few chunks, not a whole tensor: 256 Ki elements is 1 MiB of
# float32, big enough that a plane still fills many zstd blocks and compresses as well as the whole tensor.
CHUNK_ELEMENTS = 1 << 18
# Chunks are bounded in bytes: 1 MiB is CHUNK_ELEMENTS float32 values, or a million int8 ones (coders learn
# their statistics per chunk, and int8 planes are a quarter of the size of float32 ones).
CHUNK_BYTES = 4 * CHUNK_ELEMENTS

# zstd frames in the data section are per plane and therefore at most CHUNK_BYTES bytes: a bigger window
# in a patch is a hostile or broken patch, and refusing it bounds the decoder's allocation.
DATA_MAX_WINDOW = 1 << 21

# A varint longer than this cannot describe any length we accept (2**63 needs 9 bytes of 7 bits).
_MAX_VARINT_BYTES = 10
_HEADER_MAX = 2 + 2 + 32 + 32 + 4 * _MAX_VARINT_BYTES


def tensor_chunks(count: int, inner: int = 1, itemsize: int = 4) -> Iterator[tuple[int, int]]:
    """The chunks a tensor is coded in: (first element, element count) pairs.

    At most CHUNK_BYTES bytes each (CHUNK_ELEMENTS float32 elements); for per-channel (SCALE) tensors whose
    channels fit in a chunk, chunks hold whole channels, so the prediction is a plain broadcast instead of a
    per-element gather.
    """
    limit = max(1, CHUNK_BYTES // itemsize)
    size = limit
    if 1 < inner <= limit:
        size = (limit // inner) * inner
    for first in range(0, count, size):
        yield first, min(size, count - first)


class LiteralDictionary:
    """Works out which base ranges make the literal stream's zstd dictionary, from the operations alone.

    Rule (the same in make and apply, so the patch need not list them): each run of literals replaces the
    base bytes between the end of the previous base-referencing operation (copy, or XOR/SUB tensor) and the
    start of the next one. Those regions, clipped so they never overlap or go backwards, concatenated in
    order, are the dictionary. Their total therefore never exceeds the base's length.
    """

    def __init__(self, base_length: int) -> None:
        self.base_length = base_length
        self.ranges: list[tuple[int, int]] = []
        self._previous_end = 0
        self._high = 0
        self._pending = False

    def base_range(self, start: int, end: int) -> None:
        """Record an operation that reads base bytes [start, end)."""
        if self._pending:
            self._add(self._previous_end, start)
            self._pending = False
        self._previous_end = end

    def literal(self) -> None:
        """Record a literal operation."""
        self._pending = True

    def finish(self) -> list[tuple[int, int]]:
        """Close the last run of literals and return the (offset, length) ranges."""
        if self._pending:
            self._add(self._previous_end, self.base_length)
            self._pending = False
        return self.ranges

    def _add(self, start: int, end: int) -> None:
        start = max(start, self._high, 0)
        end = min(end, self.base_length)
        if end > start:
            self.ranges.append((start, end - start))
            self._high = end


def literal_prime(ranges: list[tuple[int, int]], base_length: int, limit: int) -> list[tuple[int, int]]:
    """The base ranges that prime LITERAL_MODEL's model: the same rule in make and apply.

    The last ``limit`` bytes of: the start of the base, then the literal dictionary (``ranges``, from
    :class:`LiteralDictionary`). So the bytes the literals replace come first when there are any (an edited
    doc string is best predicted by the old one), and the start of the base fills the rest (an ONNX file's
    header and first nodes: protobuf framing and identifiers, the alphabet of a new doc string or metadata
    entry). The start of the base stops where the first of those ranges begins, so no byte comes twice.

    Returns:
        (offset, length) ranges of the base, in order, totalling at most ``limit`` bytes.
    """
    prime: list[tuple[int, int]] = []
    budget = limit
    for offset, length in reversed(ranges):
        if budget <= 0:
            break
        take = min(length, budget)
        prime.append((offset + length - take, take))
        budget -= take
    # Then the start of the base, up to where the ranges begin (no byte twice).
    head = min(budget, base_length, prime[-1][0] if prime else base_length)
    if head > 0:
        prime.append((0, head))
    prime.reverse()
    return prime


class ByteSource(Protocol):
    """Anything with a file-like ``read``: a file, a section of one, or a zstd stream reader."""

    def read(self, size: int = -1, /) -> bytes:
        """Read up to ``size`` bytes (fewer only at the end)."""
        ...


@dataclass(frozen=True)
class PatchHeader:
    """What a patch promises: its format, its base and its result.

    Attributes:
        version: Format version (``FORMAT_VERSION``, or 2 for an older patch).
        codec: ``"model-aware"`` (tensor-aware operations) or ``"generic"`` (copies and literals only).
        base_sha256: Hex prefix of the sha256 of the base the patch applies to (``DIGEST_BYTES`` bytes; the
            whole digest in version 2), or ``None`` for a full (no-base) patch. Compare with
            :func:`digest_matches`.
        base_length: Length in bytes of that base, or ``None`` for a full patch.
        result_sha256: Hex prefix of the sha256 of the file the patch rebuilds (as ``base_sha256``).
        result_length: Length in bytes of the file the patch rebuilds.
        control_length: Bytes of the control section.
        literal_length: Bytes of the literal section.
        data_length: Bytes of the tensor data section (the rest of the file).
        header_length: Bytes of the header itself.
        control_method: ``"stored"`` or ``"zstd"``.
        literal_method: ``"stored"``, ``"zstd"`` or ``"model"`` (see ``literal_model``).
    """

    version: int
    codec: str
    base_sha256: str | None
    base_length: int | None
    result_sha256: str
    result_length: int
    control_length: int
    literal_length: int
    data_length: int
    header_length: int
    control_method: str = "stored"
    literal_method: str = "stored"

    @property
    def patch_length(self) -> int:
        """Total length of the patch file this header describes."""
        return self.header_length + self.control_length + self.literal_length + self.data_length

    @property
    def codec_id(self) -> int:
        """The numeric codec written in the header."""
        return next(key for key, name in CODEC_NAMES.items() if name == self.codec)

    @property
    def control_method_id(self) -> int:
        """SECTION_STORED or SECTION_ZSTD."""
        return SECTION_ZSTD if self.control_method == "zstd" else SECTION_STORED

    @property
    def literal_method_id(self) -> int:
        """LITERAL_STORED, LITERAL_ZSTD or LITERAL_MODEL."""
        return next(key for key, name in SECTION_NAMES.items() if name == self.literal_method)


def digest_matches(hexdigest: str, promised: str) -> bool:
    """Whether a whole hex sha256 matches the (possibly truncated) one a header promises."""
    return len(promised) >= 2 * DIGEST_BYTES and hexdigest.startswith(promised)


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer as unsigned LEB128.

    Raises:
        ValueError: If ``value`` is negative (a programming error in the writer, never patch input).
    """
    if value < 0:
        raise ValueError(f"varint cannot encode a negative number: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zigzag(value: int) -> int:
    """Map a signed integer onto an unsigned one so small magnitudes stay small varints."""
    return (value << 1) if value >= 0 else ((-value) << 1) - 1


def unzigzag(value: int) -> int:
    """Inverse of :func:`zigzag`."""
    return (value >> 1) if not value & 1 else -((value + 1) >> 1)


def decode_varint(buffer: bytes | memoryview, position: int) -> tuple[int, int]:
    """Decode one unsigned LEB128 varint from ``buffer`` at ``position``.

    Returns:
        The value and the position just after it.

    Raises:
        PatchCorruptError: If the varint runs past the buffer or is longer than ten bytes.
    """
    result = 0
    shift = 0
    for index in range(_MAX_VARINT_BYTES):
        if position + index >= len(buffer):
            raise PatchCorruptError("a varint runs past the end of its section (truncated patch?)")
        byte = buffer[position + index]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position + index + 1
        shift += 7
    raise PatchCorruptError("a varint is longer than ten bytes")


def read_varint(stream: ByteSource) -> int:
    """Read one unsigned LEB128 varint from a byte stream.

    Raises:
        PatchCorruptError: If the stream ends inside the varint or it is longer than ten bytes.
    """
    result = 0
    shift = 0
    for _ in range(_MAX_VARINT_BYTES):
        byte = stream.read(1)
        if not byte:
            raise PatchCorruptError("a varint runs past the end of its section (truncated patch?)")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
    raise PatchCorruptError("a varint is longer than ten bytes")


def encode_copy(length: int, offset_delta: int | None = None) -> bytes:
    """An OP_COPY_NEXT (``offset_delta`` None or 0) or OP_COPY operation.

    Raises:
        ValueError: If ``length`` is not positive (a writer bug).
    """
    _positive(length)
    if not offset_delta:
        return encode_varint(length << _OP_KIND_BITS | OP_COPY_NEXT)
    return encode_varint(length << _OP_KIND_BITS | OP_COPY) + encode_varint(zigzag(offset_delta))


def encode_literal(length: int) -> bytes:
    """An OP_LITERAL operation.

    Raises:
        ValueError: If ``length`` is not positive (a writer bug).
    """
    _positive(length)
    return encode_varint(length << _OP_KIND_BITS | OP_LITERAL)


def encode_tensor(transform: int, itemsize: int, count: int, offset_delta: int | None) -> bytes:
    """An OP_TENSOR operation (``offset_delta`` is None exactly for TRANSFORM_RAW).

    Raises:
        ValueError: On an unknown transform or item size, a count that is not positive, or an offset given
            for RAW or missing for another transform (writer bugs).
    """
    _positive(count)
    if transform not in TRANSFORM_NAMES or itemsize not in ITEMSIZES:
        raise ValueError(f"no tensor operation for transform {transform} and item size {itemsize}")
    if (offset_delta is None) != (transform == TRANSFORM_RAW):
        raise ValueError("a tensor operation has a base offset exactly when it is not RAW")
    head = encode_varint(count << _OP_KIND_BITS | OP_TENSOR) + bytes(
        [transform << 2 | ITEMSIZES.index(itemsize)]
    )
    return head if offset_delta is None else head + encode_varint(zigzag(offset_delta))


def decode_operation_head(head: int) -> tuple[int, int]:
    """Split an operation's first varint into (kind, length).

    Raises:
        PatchCorruptError: If the length is zero (no operation may leave the output where it was).
    """
    kind, length = head & ((1 << _OP_KIND_BITS) - 1), head >> _OP_KIND_BITS
    if length == 0:
        raise PatchCorruptError("an operation of length zero")
    return kind, length


def decode_tensor_byte(value: int) -> tuple[int, int]:
    """Split an OP_TENSOR's transform byte into (transform, itemsize).

    Raises:
        PatchCorruptError: On an unknown transform or reserved bits.
    """
    transform, size_code = value >> 2, value & 0x03
    if transform not in TRANSFORM_NAMES:
        raise PatchCorruptError(f"tensor operation with unknown transform {transform}")
    return transform, ITEMSIZES[size_code]


def _positive(value: int) -> None:
    if value < 1:
        raise ValueError(f"operation lengths are at least 1, not {value}")


def encode_header(
    *,
    codec: int,
    base_sha256: bytes | None,
    base_length: int | None,
    result_sha256: bytes,
    result_length: int,
    control_length: int,
    literal_length: int,
    control_method: int = SECTION_STORED,
    literal_method: int = LITERAL_STORED,
) -> bytes:
    """Serialise a header (the writer's half of :func:`parse_header`); the data section is what follows.

    Raises:
        ValueError: If a digest is not 32 bytes, base fields are half given, or a codec or method is
            unknown (writer bugs).
    """
    if len(result_sha256) != 32 or (base_sha256 is not None and len(base_sha256) != 32):
        raise ValueError("sha256 digests must be 32 bytes")
    result_sha256 = result_sha256[:DIGEST_BYTES]
    base_sha256 = None if base_sha256 is None else base_sha256[:DIGEST_BYTES]
    if (base_sha256 is None) != (base_length is None):
        raise ValueError("base_sha256 and base_length go together")
    if codec not in CODEC_NAMES or literal_method not in SECTION_NAMES or control_method not in (0, 1):
        raise ValueError(f"unknown codec {codec} or section methods {control_method}, {literal_method}")
    flags = codec | literal_method << _FLAG_LITERAL_SHIFT
    if base_sha256 is not None:
        flags |= _FLAG_HAS_BASE
    if control_method == SECTION_ZSTD:
        flags |= _FLAG_CONTROL_ZSTD
    parts = [MAGIC, bytes([FORMAT_VERSION, flags]), result_sha256, encode_varint(result_length)]
    if base_sha256 is not None and base_length is not None:
        parts += [base_sha256, encode_varint(zigzag(base_length - result_length))]
    parts += [encode_varint(control_length), encode_varint(literal_length)]
    return b"".join(parts)


def parse_header(prefix: bytes, *, file_length: int) -> PatchHeader:
    """Parse and check a header from the first bytes of a patch.

    Args:
        prefix: The first bytes of the patch (at least the whole header; extra bytes are ignored).
        file_length: The patch's total length: the data section is what the header and the control and
            literal sections leave of it.

    Raises:
        PatchFormatError: Wrong magic, unknown version, codec, section method or flags.
        PatchCorruptError: The header is truncated, or its sections do not fit in ``file_length``.
    """
    if prefix[:4] == _MAGIC_V1:
        raise PatchFormatError(
            f"this is a format version 1 patch; this build reads version {FORMAT_VERSION} only "
            "(make the patch again)"
        )
    if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
        raise PatchFormatError("not an EdgeFleet delta patch (bad magic bytes)")
    if len(prefix) < 4:
        raise PatchCorruptError("patch header is truncated")
    version, flags = prefix[2], prefix[3]
    if version not in (FORMAT_VERSION, _FORMAT_V2):
        raise PatchFormatError(
            f"patch format version {version} is not supported "
            f"(this build reads {_FORMAT_V2} and {FORMAT_VERSION})"
        )
    digest_bytes = DIGEST_BYTES if version == FORMAT_VERSION else _DIGEST_BYTES_V2
    codec = flags & _FLAG_CODEC_MASK
    literal_method = (flags & _FLAG_LITERAL_MASK) >> _FLAG_LITERAL_SHIFT
    if codec not in CODEC_NAMES:
        raise PatchFormatError(f"unknown patch codec {codec}")
    if literal_method not in SECTION_NAMES:
        raise PatchFormatError(f"unknown literal section method {literal_method}")
    if flags & _FLAG_RESERVED:
        raise PatchFormatError(f"unknown patch header flags 0x{flags:02x}")
    position = 4
    if len(prefix) < position + digest_bytes:
        raise PatchCorruptError("patch header is truncated inside the result sha256")
    result_hex = prefix[position : position + digest_bytes].hex()
    result_length, position = decode_varint(prefix, position + digest_bytes)
    base_hex: str | None = None
    base_length: int | None = None
    if flags & _FLAG_HAS_BASE:
        if len(prefix) < position + digest_bytes:
            raise PatchCorruptError("patch header is truncated inside the base sha256")
        base_hex = prefix[position : position + digest_bytes].hex()
        base_delta, position = decode_varint(prefix, position + digest_bytes)
        base_length = result_length + unzigzag(base_delta)
        if base_length < 0:
            raise PatchCorruptError(f"patch header gives the base a negative length ({base_length})")
    control_length, position = decode_varint(prefix, position)
    literal_length, position = decode_varint(prefix, position)
    if control_length == 0 and result_length > 0:
        raise PatchCorruptError("patch has an empty control section")
    data_length = file_length - position - control_length - literal_length
    if data_length < 0:
        raise PatchCorruptError(
            f"patch is {file_length} bytes but its header and sections need "
            f"{position + control_length + literal_length} (truncated or damaged)"
        )
    return PatchHeader(
        version=version,
        codec=CODEC_NAMES[codec],
        base_sha256=base_hex,
        base_length=base_length,
        result_sha256=result_hex,
        result_length=result_length,
        control_length=control_length,
        literal_length=literal_length,
        data_length=data_length,
        header_length=position,
        control_method="zstd" if flags & _FLAG_CONTROL_ZSTD else "stored",
        literal_method=SECTION_NAMES[literal_method],
    )


def read_header(patch: Path) -> PatchHeader:
    """Read and check the header of a patch file without applying it.

    Raises:
        PatchFormatError: The file is not a patch this build can read.
        PatchCorruptError: The header is truncated or the file length disagrees with it.
        DeltaInputError: The file cannot be opened.
    """
    try:
        with patch.open("rb") as handle:
            prefix = handle.read(_HEADER_MAX)
            handle.seek(0, 2)
            length = handle.tell()
    except OSError as exc:
        raise DeltaInputError(f"cannot read patch {patch}: {exc.strerror or exc}") from exc
    return parse_header(prefix, file_length=length)
