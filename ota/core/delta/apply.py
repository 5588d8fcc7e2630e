"""Apply delta patches in bounded memory: the edge agent's half of ``ota.core.delta``.

Imports only the stdlib, numpy and zstandard (the agent runs on a vehicle). The patch is treated as hostile
until the result's sha256 matches:

* the base must match the header: its length before anything runs, its sha256 (hashed in a background
  thread while the rebuild runs) before anything is published, and first when anything fails;
* every operation is bounds-checked: copies and tensor reads stay inside the base, writes never pass the
  header's result length (itself capped by ``max_output_bytes``), zstd windows and frames are capped so a
  patch cannot make the decoder allocate without bound, and a model-coded literal section
  (``literal_model``) is refused beyond ``MAX_LITERAL`` bytes, so it costs at most about 0.3 s and 3 MB;
* every operation has a length of at least one byte and the operations must add up to the result
  exactly, so the control stream cannot loop or stop early;
* output goes to a temp file beside ``out`` and is renamed into place only after its length and sha256
  match; on any failure the temp file is removed, so there is never a half-written output.

Memory is bounded by one tensor chunk (``CHUNK_BYTES``, 1 MiB, a few copies) plus the literal dictionary:
for model-aware patches, the base bytes the changed skeleton replaces (small); for generic ones, the whole
base (the price of ``--patch-from``; make picks generic only when it is smaller, i.e. for non-models).
Measured on ResNet-18 (45 MB): 0.5 s and 48 MB peak RSS for the whole Python process.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import lzma
import math
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import zstandard

from ota.core.delta import literal_model
from ota.core.delta.codecs import (
    WORD_DTYPES,
    join_planes,
    sparse_decode,
    token_positions,
    untransform_words,
)
from ota.core.delta.errors import (
    BaseMismatchError,
    DeltaError,
    DeltaInputError,
    LimitExceededError,
    PatchCorruptError,
    ResultMismatchError,
)
from ota.core.delta.format import (
    CHUNK_CHANGED_WORDS,
    CHUNK_DENSE,
    CHUNK_WORD_SPARSE,
    DATA_MAX_WINDOW,
    LITERAL_MODEL,
    LITERAL_ZSTD,
    LZMA_FILTERS,
    OP_COPY,
    OP_COPY_NEXT,
    OP_LITERAL,
    PLANE_LZMA,
    PLANE_SPARSE,
    PLANE_STORED,
    PLANE_ZSTD,
    SECTION_STORED,
    SECTION_ZSTD,
    TRANSFORM_RAW,
    TRANSFORM_SCALE,
    ByteSource,
    LiteralDictionary,
    PatchHeader,
    decode_operation_head,
    decode_tensor_byte,
    decode_varint,
    digest_matches,
    literal_prime,
    read_header,
    read_varint,
    tensor_chunks,
    unzigzag,
)
from ota.core.files import fsync_dir, sha256_file

_IO_CHUNK = 1 << 20
# zstd adds at most a few bytes per 128 KiB block to incompressible data, so a compressed plane larger than
# this is not one our writer made.
_PLANE_SLACK = 1024
_MAX_LITERAL_WINDOW_LOG = 31


class _Section:
    """A read-only window [start, start + length) of an open file: reads never leave the section."""

    def __init__(self, handle: BinaryIO, start: int, length: int) -> None:
        self._handle = handle
        self._start = start
        self._remaining = length
        handle.seek(start)

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._handle.read(size)
        self._remaining -= len(data)
        return data

    def readable(self) -> bool:
        return True

    @property
    def remaining(self) -> int:
        return self._remaining


def _read_exact(stream: ByteSource, size: int, what: str) -> bytes:
    parts: list[bytes] = []
    missing = size
    while missing:
        block = stream.read(min(missing, _IO_CHUNK))
        if not block:
            raise PatchCorruptError(f"patch ends inside {what} (truncated or corrupt)")
        parts.append(block)
        missing -= len(block)
    return b"".join(parts)


def _open_section(
    handle: BinaryIO,
    start: int,
    length: int,
    method: int,
    *,
    dictionary: bytes = b"",
    max_window: int = DATA_MAX_WINDOW,
) -> ByteSource:
    """Open a stored or zstd-compressed control or literal section as a byte stream."""
    section = _Section(handle, start, length)
    if method == SECTION_STORED:
        return section
    if method != SECTION_ZSTD:
        raise PatchCorruptError(f"unknown section method {method}")
    zdict = (
        zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        if dictionary
        else None
    )
    decompressor = zstandard.ZstdDecompressor(
        dict_data=zdict, max_window_size=max_window, format=zstandard.FORMAT_ZSTD1_MAGICLESS
    )
    # Read incrementally: a hostile stream cannot make us hold more than a block (or the capped window).
    return decompressor.stream_reader(section)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _CopyOp:
    offset: int
    length: int


@dataclass(frozen=True)
class _LiteralOp:
    length: int


@dataclass(frozen=True)
class _TensorOp:
    transform: int
    itemsize: int
    count: int
    base_offset: int | None


def _operations(control: ByteSource, result_length: int) -> Iterator[_CopyOp | _LiteralOp | _TensorOp]:
    """Decode the control stream one operation at a time (offsets made absolute, fields validated).

    Operations run until they account for ``result_length`` bytes; the control section must end there.
    """
    cursor = 0
    produced = 0
    while produced < result_length:
        if not (first := control.read(1)):
            raise PatchCorruptError("the control section ends before the result is complete")
        head = first[0] if first[0] < 0x80 else (read_varint(control) << 7) | (first[0] & 0x7F)
        kind, length = decode_operation_head(head)
        if kind in (OP_COPY_NEXT, OP_COPY):
            offset = cursor if kind == OP_COPY_NEXT else cursor + unzigzag(read_varint(control))
            cursor = offset + length
            produced += length
            yield _CopyOp(offset, length)
        elif kind == OP_LITERAL:
            produced += length
            yield _LiteralOp(length)
        else:
            transform, itemsize = decode_tensor_byte(_read_exact(control, 1, "a tensor operation")[0])
            base_offset: int | None = None
            if transform != TRANSFORM_RAW:
                base_offset = cursor + unzigzag(read_varint(control))
                cursor = base_offset + length * itemsize
            produced += length * itemsize
            yield _TensorOp(transform, itemsize, length, base_offset)
    if control.read(1):
        raise PatchCorruptError("the control section goes on after the last operation")


class _Output:
    """The temp output file: counts and hashes what is written and refuses to pass the promised length."""

    def __init__(self, handle: BinaryIO, limit: int) -> None:
        self.handle = handle
        self.limit = limit
        self.written = 0
        self.digest = hashlib.sha256()

    def reserve(self, size: int, what: str) -> None:
        if size < 0 or self.written + size > self.limit:
            raise LimitExceededError(
                f"{what} would write past the {self.limit}-byte result the header promises"
            )

    def write(self, data: bytes | memoryview) -> None:
        self.reserve(len(data), "the patch")
        self.handle.write(data)
        self.digest.update(data)
        self.written += len(data)


class _Base:
    """The base file with bounds-checked reads."""

    def __init__(self, handle: BinaryIO | None, length: int) -> None:
        self.handle = handle
        self.length = length

    def read(self, offset: int, size: int) -> bytes:
        if self.handle is None or offset < 0 or size < 0 or offset + size > self.length:
            raise LimitExceededError(
                f"patch reads base bytes [{offset}, {offset + size}) outside the {self.length}-byte base"
            )
        self.handle.seek(offset)
        data = self.handle.read(size)
        if len(data) != size:
            raise BaseMismatchError("base file changed or shrank while the patch was applied")
        return data


def _read_plane(data: _Section, count: int, decompressor: zstandard.ZstdDecompressor) -> bytes:
    method = _read_exact(data, 1, "a plane record")[0]
    length = read_varint(data)
    if method == PLANE_STORED:
        if length != count:
            raise PatchCorruptError(f"stored plane has {length} bytes, expected {count}")
        return _read_exact(data, length, "a stored plane")
    if method not in (PLANE_ZSTD, PLANE_SPARSE, PLANE_LZMA):
        raise PatchCorruptError(f"unknown plane method {method}")
    if length > count + _PLANE_SLACK:
        raise LimitExceededError(f"compressed plane of {length} bytes for {count} bytes of output")
    frame = _read_exact(data, length, "a compressed plane")
    if method == PLANE_SPARSE:
        return _sparse_plane(frame, count, decompressor)
    if method == PLANE_LZMA:
        return _lzma_plane(frame, count)
    try:
        plane = decompressor.decompress(frame, max_output_size=count)
    except zstandard.ZstdError as exc:
        raise PatchCorruptError(f"a tensor plane does not decompress: {exc}") from exc
    if len(plane) != count:
        raise PatchCorruptError(f"a tensor plane decompressed to {len(plane)} bytes, expected {count}")
    return plane


def _lzma_plane(payload: bytes, count: int) -> bytes:
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=list(LZMA_FILTERS))
    try:
        plane = decoder.decompress(payload, max_length=count)
    except lzma.LZMAError as exc:
        raise PatchCorruptError(f"an LZMA tensor plane is corrupt: {exc}") from exc
    if len(plane) != count:
        raise PatchCorruptError(f"an LZMA tensor plane decompressed to {len(plane)} bytes, expected {count}")
    return plane


def _sparse_plane(payload: bytes, count: int, decompressor: zstandard.ZstdDecompressor) -> bytes:
    token_length, position = decode_varint(payload, 0)
    if position + token_length > len(payload):
        raise PatchCorruptError("sparse plane's token frame runs past its record")
    try:
        # Each token advances at least one byte and each value fills one: neither can outnumber the plane.
        tokens = decompressor.decompress(payload[position : position + token_length], max_output_size=count)
        values = decompressor.decompress(payload[position + token_length :], max_output_size=count)
        return sparse_decode(tokens, values, count)
    except (zstandard.ZstdError, ValueError) as exc:
        raise PatchCorruptError(f"a sparse tensor plane is corrupt: {exc}") from exc


def _literal_plan(header: PatchHeader, patch: BinaryIO, base: _Base) -> tuple[list[tuple[int, int]], int]:
    """First pass over the control stream: the base ranges the literals replace, and the literals' total."""
    planner = LiteralDictionary(base.length)
    control = _open_section(patch, header.header_length, header.control_length, header.control_method_id)
    total = 0
    for op in _operations(control, header.result_length):
        if isinstance(op, _CopyOp):
            planner.base_range(op.offset, op.offset + op.length)
        elif isinstance(op, _LiteralOp):
            planner.literal()
            total += op.length
        elif op.base_offset is not None:
            planner.base_range(op.base_offset, op.base_offset + op.count * op.itemsize)
    return planner.finish(), total


def _open_literals(header: PatchHeader, handle: BinaryIO, base: _Base) -> ByteSource:
    """The literal stream: its dictionary (zstd) or prime (model) comes from the base, per the operations."""
    start = header.header_length + header.control_length
    ranges, total = _literal_plan(header, handle, base)
    if header.literal_method_id == LITERAL_MODEL:
        if total > literal_model.MAX_LITERAL or header.literal_length > 2 * literal_model.MAX_LITERAL + 16:
            raise LimitExceededError(
                f"model-coded literal section of {header.literal_length} bytes for {total} bytes of literals "
                f"(at most {literal_model.MAX_LITERAL})"
            )
        prime_ranges = literal_prime(ranges, base.length, literal_model.MAX_PRIME)
        prime = b"".join(base.read(offset, length) for offset, length in prime_ranges)
        section = _Section(handle, start, header.literal_length)
        payload = _read_exact(section, header.literal_length, "the literal section")
        try:
            return io.BytesIO(literal_model.decode(payload, prime, total))
        except ValueError as exc:
            raise PatchCorruptError(f"model-coded literal section is corrupt: {exc}") from exc
    dictionary = b""
    if header.literal_method_id == LITERAL_ZSTD:
        dictionary = b"".join(base.read(offset, length) for offset, length in ranges)
    # The literal stream may reference its whole dictionary plus everything it wrote: cap the window
    # there, so a patch cannot ask the decoder for more memory than the result it promises.
    needed = header.result_length + len(dictionary) + 1
    window = 1 << min(_MAX_LITERAL_WINDOW_LOG, max(10, math.ceil(math.log2(needed))))
    return _open_section(
        handle,
        start,
        header.literal_length,
        header.literal_method_id,
        dictionary=dictionary,
        max_window=window,
    )


def _run(header: PatchHeader, patch_path: Path, base: _Base, output: _Output) -> None:
    start = header.header_length
    with (
        patch_path.open("rb") as control_handle,
        patch_path.open("rb") as literal_handle,
        patch_path.open("rb") as data_handle,
    ):
        literals = _open_literals(header, literal_handle, base) if header.literal_length else None
        control = _open_section(control_handle, start, header.control_length, header.control_method_id)
        data = _Section(
            data_handle, start + header.control_length + header.literal_length, header.data_length
        )
        plane_decompressor = zstandard.ZstdDecompressor(
            max_window_size=DATA_MAX_WINDOW, format=zstandard.FORMAT_ZSTD1_MAGICLESS
        )
        for op in _operations(control, header.result_length):
            if isinstance(op, _CopyOp):
                output.reserve(op.length, "a copy")
                for piece in range(op.offset, op.offset + op.length, _IO_CHUNK):
                    output.write(base.read(piece, min(_IO_CHUNK, op.offset + op.length - piece)))
            elif isinstance(op, _LiteralOp):
                output.reserve(op.length, "a literal")
                if literals is None:
                    raise PatchCorruptError("a literal operation but the patch has no literal section")
                remaining = op.length
                while remaining:
                    block = _read_exact(literals, min(remaining, _IO_CHUNK), "the literal stream")
                    output.write(block)
                    remaining -= len(block)
            else:
                _apply_tensor(op, data, base, output, plane_decompressor)
        if data.remaining:
            raise PatchCorruptError(f"{data.remaining} unused bytes at the end of the tensor data section")


def _apply_tensor(
    op: _TensorOp, data: _Section, base: _Base, output: _Output, decompressor: zstandard.ZstdDecompressor
) -> None:
    output.reserve(op.count * op.itemsize, "a tensor")
    if op.base_offset is not None and (
        op.base_offset < 0 or op.base_offset + op.count * op.itemsize > base.length
    ):
        raise LimitExceededError("a tensor operation reads outside the base")
    scales: npt.NDArray[np.float32] | None = None
    inner = 1
    if op.transform == TRANSFORM_SCALE:
        channels = read_varint(data)
        if op.itemsize != 4 or channels < 1 or channels > op.count or op.count % channels:
            raise PatchCorruptError(f"scale tensor of {op.count} elements cannot have {channels} channels")
        scales = np.frombuffer(_read_exact(data, 4 * channels, "channel scales"), dtype="<f4")
        inner = op.count // channels
    for first, chunk in tensor_chunks(op.count, inner, op.itemsize):
        base_chunk = None
        if op.base_offset is not None:
            base_chunk = base.read(op.base_offset + first * op.itemsize, chunk * op.itemsize)
        words, final = _read_chunk_words(data, chunk, op.itemsize, decompressor, base_chunk)
        if final:
            output.write(words.tobytes())
            continue
        rebuilt = untransform_words(
            words,
            base_chunk,
            transform=op.transform,
            itemsize=op.itemsize,
            scales=scales,
            first=first,
            inner=inner,
        )
        output.write(rebuilt.tobytes())


def _read_chunk_words(
    data: _Section,
    count: int,
    itemsize: int,
    decompressor: zstandard.ZstdDecompressor,
    base_chunk: bytes | None,
) -> tuple[npt.NDArray[np.unsignedinteger], bool]:
    """Read one chunk's words: dense planes, or a change map plus the changed words.

    Returns:
        The words, and whether they are already the final values (CHUNK_CHANGED_WORDS) rather than
        transformed ones.
    """
    mode = _read_exact(data, 1, "a chunk header")[0]
    if mode == CHUNK_DENSE:
        planes = [_read_plane(data, count, decompressor) for _ in range(itemsize)]
        return join_planes(planes, itemsize, count), False
    if mode not in (CHUNK_WORD_SPARSE, CHUNK_CHANGED_WORDS):
        raise PatchCorruptError(f"unknown chunk mode {mode}")
    if mode == CHUNK_CHANGED_WORDS and base_chunk is None:
        raise PatchCorruptError("a changed-words chunk in a tensor without a base")
    token_count = read_varint(data)
    if token_count > count:
        raise PatchCorruptError(f"word-sparse chunk has {token_count} tokens for {count} words")
    tokens = _read_plane(data, token_count, decompressor)
    try:
        positions = token_positions(tokens, count)
    except ValueError as exc:
        raise PatchCorruptError(f"word-sparse chunk map is corrupt: {exc}") from exc
    if mode == CHUNK_CHANGED_WORDS and base_chunk is not None:
        words = np.frombuffer(base_chunk, dtype=WORD_DTYPES[itemsize]).copy()
    else:
        words = np.zeros(count, dtype=WORD_DTYPES[itemsize])
    if positions.size:
        planes = [_read_plane(data, positions.size, decompressor) for _ in range(itemsize)]
        words[positions] = join_planes(planes, itemsize, positions.size)
    return words, mode == CHUNK_CHANGED_WORDS


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable across power loss; not every platform can open a directory, hence suppress.
    with contextlib.suppress(OSError):
        fsync_dir(directory)


class _BaseDigest:
    """The base's sha256, computed in a background thread while apply runs (hashlib releases the GIL).

    Hashing a 45 MB base takes about a tenth of apply's time; overlapping it with the rebuild hides most of
    it. The digest is checked before anything is published, and first when apply fails, so a wrong base
    always gets its own clear error.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delta-base-sha256")
        self._future = self._pool.submit(sha256_file, base)

    def check(self, expected: str) -> None:
        try:
            digest, _ = self._future.result()
        except OSError as exc:
            raise DeltaInputError(f"cannot read base {self.base}: {exc.strerror or exc}") from exc
        finally:
            self._pool.shutdown(wait=True)
        if not digest_matches(digest, expected):
            raise BaseMismatchError(
                f"base {self.base} (sha256 {digest[:16]}…) is not the patch's base (sha256 {expected[:16]}…)"
            )


def apply_delta(
    base: Path | None, patch: Path, out: Path, *, max_output_bytes: int | None = None
) -> PatchHeader:
    """Rebuild the new file from ``base`` and ``patch`` into ``out``, verifying its sha256 before publishing.

    Args:
        base: The file the patch was made against, or ``None`` for a full (no-base) patch.
        patch: The patch file.
        out: Where the result goes; replaced atomically, and untouched on any error.
        max_output_bytes: Refuse patches whose result is larger than this.

    Returns:
        The patch's header.

    Raises:
        PatchFormatError: Not a patch, or an unknown version, codec or flag.
        PatchCorruptError: Truncated or damaged patch, or operations inconsistent with the header.
        BaseMismatchError: The base is missing for a delta patch, or its length or sha256 differ.
        LimitExceededError: The result exceeds ``max_output_bytes`` or the patch reaches outside its bounds.
        ResultMismatchError: The rebuilt file does not match the header's length or sha256.
        DeltaInputError: The patch or base cannot be read, or ``out``'s folder cannot be written.
    """
    header = read_header(patch)
    if max_output_bytes is not None and header.result_length > max_output_bytes:
        raise LimitExceededError(
            f"patch result is {header.result_length} bytes, more than the allowed {max_output_bytes}"
        )
    base_handle: BinaryIO | None = None
    base_length = 0
    if header.base_sha256 is not None:
        if base is None:
            raise BaseMismatchError("this patch is a delta and needs a base file, but none was given")
        try:
            base_length = base.stat().st_size
        except OSError as exc:
            raise DeltaInputError(f"cannot read base {base}: {exc.strerror or exc}") from exc
        if base_length != header.base_length:
            raise BaseMismatchError(
                f"base {base} has {base_length} bytes; the patch's base has {header.base_length}"
            )
    base_digest = _BaseDigest(base) if header.base_sha256 is not None and base is not None else None
    out = out.absolute()
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        if base_digest is not None and header.base_sha256 is not None:
            base_digest.check(header.base_sha256)
        raise DeltaInputError(f"cannot create a temp file beside {out}: {exc.strerror or exc}") from exc
    temp = Path(temp_name)
    try:
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(os.fdopen(fd, "wb"))
            if header.base_sha256 is not None and base is not None:
                base_handle = stack.enter_context(base.open("rb"))
            output = _Output(handle, header.result_length)
            _run(header, patch, _Base(base_handle, base_length), output)
            if base_digest is not None and header.base_sha256 is not None:
                base_digest.check(header.base_sha256)
            if output.written != header.result_length:
                raise ResultMismatchError(
                    f"patch rebuilt {output.written} bytes but its header promises {header.result_length}"
                )
            if not digest_matches(output.digest.hexdigest(), header.result_sha256):
                raise ResultMismatchError(
                    f"rebuilt file has sha256 {output.digest.hexdigest()[:16]}…, "
                    f"the patch promises {header.result_sha256[:16]}…"
                )
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(out)
    except BaseException as exc:
        # Whatever happened, no half-written output may survive; then map library errors to ours.
        temp.unlink(missing_ok=True)
        if not isinstance(exc, Exception):
            raise
        if (
            base_digest is not None
            and header.base_sha256 is not None
            and not isinstance(exc, BaseMismatchError)
        ):
            # A wrong base of the right length usually breaks the rebuild first: name the real cause.
            try:
                base_digest.check(header.base_sha256)
            except DeltaError as base_error:
                raise base_error from exc
        if isinstance(exc, DeltaError):
            raise
        if isinstance(exc, zstandard.ZstdError):
            raise PatchCorruptError(f"patch stream does not decompress: {exc}") from exc
        if isinstance(exc, OSError):
            raise DeltaInputError(f"I/O error while applying {patch}: {exc.strerror or exc}") from exc
        if isinstance(exc, ValueError | OverflowError | MemoryError):
            raise PatchCorruptError(f"patch is inconsistent: {exc}") from exc
        raise
    _fsync_directory(out.parent)
    return header
