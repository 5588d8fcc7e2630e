"""Crash-safe file primitives for the edge agent: atomic writes and directory fsync.

Everything the agent persists (state, slot pointer, keys, queued reports) goes through here, so that a
``kill -9`` or a power cut at any instant leaves either the old file or the new one, never a torn mix.
The recipe is the classic one: write a temp file in the same directory, fsync it, ``os.replace`` it over
the target, then fsync the directory so that the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ota.core import files as core_files
from ota.edge.errors import SlotError


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry so that a rename or create inside it survives a power cut.

    Args:
        directory: The directory to flush.

    Raises:
        SlotError: If the directory cannot be opened or flushed.
    """
    try:
        core_files.fsync_dir(directory)
    except OSError as exc:
        raise SlotError(f"cannot fsync directory {directory}: {exc}") from exc


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) if missing and make it 0700, tightening an older, wider one.

    The agent's state dir holds its private key, tokens' proofs and models: nobody else may list or read
    it. ``mkdir(mode=…)`` is masked by the umask and leaves an existing directory alone, hence the chmod.

    Raises:
        SlotError: If the directory cannot be created or its mode set.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
    except OSError as exc:
        raise SlotError(f"cannot create {directory} as a private (0700) directory: {exc}") from exc


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Args:
        path: The file to write; its parent directory must exist.
        data: The full new contents.
        mode: Permission bits of the new file (private by default: everything the agent keeps is).

    Raises:
        SlotError: If the write fails (for example, the disk is full); the old file is left untouched.
    """
    try:
        core_files.atomic_write_bytes(path, data, mode=mode)
    except OSError as exc:
        raise SlotError(f"cannot write {path}: {exc}") from exc


def atomic_write_json(path: Path, document: Any, *, mode: int = 0o600) -> None:
    """Serialise ``document`` as sorted, indented JSON and write it with :func:`atomic_write_bytes`.

    Args:
        path: The file to write.
        document: A JSON-serialisable value.
        mode: Permission bits of the new file.

    Raises:
        SlotError: If the write fails.
    """
    atomic_write_bytes(path, json.dumps(document, indent=2, sort_keys=True).encode(), mode=mode)


def atomic_symlink(link: Path, target: str) -> None:
    """Point the symlink ``link`` at ``target`` atomically (create a temp link, then rename over).

    Args:
        link: The symlink path.
        target: What it should point to (relative targets keep the state dir relocatable).

    Raises:
        SlotError: If the link cannot be created.
    """
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target)
        tmp.replace(link)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SlotError(f"cannot point {link} at {target}: {exc}") from exc
    fsync_dir(link.parent)


def sha256_file(path: Path, *, chunk_bytes: int = 1024 * 1024) -> str:
    """Hash a file in bounded memory.

    Args:
        path: The file to hash.
        chunk_bytes: Read size; memory use stays at about this much.

    Returns:
        The lowercase hex sha256 of the file.

    Raises:
        SlotError: If the file cannot be read.
    """
    try:
        return core_files.sha256_file(path, chunk=chunk_bytes)[0]
    except OSError as exc:
        raise SlotError(f"cannot read {path} to hash it: {exc}") from exc
