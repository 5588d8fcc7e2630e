"""File helpers of the ML side (``ml``, ``registry``, ``steps``, ``pipelines``): one atomic write, one
streamed sha256. The OTA side has its own pair in ``ota/core/files.py``; the two sides share no code.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

CHUNK_BYTES = 1 << 20


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then ``os.replace``.

    Raises:
        OSError: The folder cannot be created or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
