"""File helpers of the OTA side (server and agent): one atomic write and one streamed sha256.

The ML side has its own pair in ``ml/files.py``: the two sides share no code (import-linter keeps
``ota`` and ``ml`` apart), but each has exactly one of each. Both raise plain ``OSError``; callers map it
to their own error tree (the agent to ``SlotError``, the delta code to ``DeltaInputError``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1 << 20


def fsync_dir(directory: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk.

    Raises:
        OSError: The folder cannot be opened or synced.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path`` for writing; on a clean exit fsync it, ``os.replace`` it onto ``path``
    and fsync the folder. On any error (the block's included) the temp file is removed, ``path`` untouched.

    Args:
        path: Destination file; its parent folder is created if missing.
        mode: Permission bits of the final file (``0o600`` for private keys), set before any byte lands.

    Raises:
        OSError: The folder or file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_writer`).

    Raises:
        OSError: The folder or file cannot be written; the old file, if any, is left untouched.
    """
    with atomic_writer(path, mode=mode) as handle:
        handle.write(data)


def atomic_copy(source: Path, path: Path, *, mode: int = 0o644, chunk: int = CHUNK_BYTES) -> None:
    """Copy ``source`` onto ``path`` atomically, streamed in bounded memory.

    Raises:
        OSError: ``source`` cannot be read or ``path`` written; ``path`` is left untouched.
    """
    with source.open("rb") as src, atomic_writer(path, mode=mode) as dst:
        shutil.copyfileobj(src, dst, chunk)


def sha256_file(path: Path, *, chunk: int = CHUNK_BYTES) -> tuple[str, int]:
    """Stream a file through sha256 in bounded memory (about ``chunk`` bytes).

    Returns:
        The lowercase hex digest and the file's length.

    Raises:
        OSError: The file cannot be read.
    """
    digest = hashlib.sha256()
    length = 0
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            length += len(block)
    return digest.hexdigest(), length
