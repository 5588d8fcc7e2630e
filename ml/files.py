"""File helpers of the ML side (``ml``, ``registry``, ``steps``, ``pipelines``): one atomic write, one
streamed sha256. The OTA side has its own pair in ``ota/core/files.py``; the two sides share no code.
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


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path`` for writing; on a clean exit fsync it and ``os.replace`` it onto
    ``path``. On any error (the block's included) the temp file is removed and ``path`` left untouched.

    Raises:
        OSError: The folder cannot be created or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    Writers that only accept a file name (the torch exporter, ORT's quantizer) write to the
    yielded path, so a crash never leaves a half-written file under the final name.

    Raises:
        OSError: The folder cannot be created or the file cannot be moved into place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_writer`).

    Raises:
        OSError: The folder cannot be created or written.
    """
    with atomic_writer(path) as handle:
        handle.write(data)
    return path


def copy_atomic(source: Path, path: Path) -> Path:
    """Copy ``source`` onto ``path`` atomically, streamed in 1 MiB chunks.

    Raises:
        OSError: ``source`` cannot be read or ``path`` written; ``path`` is left untouched.
    """
    with source.open("rb") as src, atomic_writer(path) as dst:
        shutil.copyfileobj(src, dst, CHUNK_BYTES)
    return path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks.

    Raises:
        OSError: The file cannot be read.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
