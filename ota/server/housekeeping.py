"""Temp files of the OTA server: where uploads and publishes stage bytes, and the sweep of leftovers.

An upload or publish works in a folder ``{kind}-p{pid}-{random}`` under the server's temp folder
(``settings.temp_dir``) and removes it when done. A process killed with SIGKILL cannot, and the local blob
store's ``.{name}.part`` / ``.{name}.*.tmp`` files of an interrupted write stay too: hundreds of MB per
kill. :func:`sweep_stale_temp` removes what belongs to no live process, or is older than a cutoff; the app
runs it at start and periodically (``EDGEFLEET_TEMP_SWEEP_INTERVAL``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_OWNED = re.compile(r"^[a-z]+-p(\d+)-")
# Left by LocalBlobStore.put_file (``.name.part``) and atomic_write_bytes (``.name.xxxx.tmp``).
_BLOB_TEMP = re.compile(r"^\..+\.(part|tmp)$")


@contextmanager
def upload_dir(parent: Path | None, *, kind: str = "upload") -> Iterator[Path]:
    """Create a private working folder named after this process, and remove it when the block ends.

    Args:
        parent: The server's temp folder (created when missing); the system's temp folder when None.
        kind: A lowercase word naming the work (``upload``, ``delta``).

    Yields:
        The folder.
    """
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix=f"{kind}-p{os.getpid()}-", dir=parent) as tmp:
        yield Path(tmp)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for child in path.rglob("*"):
            try:
                newest = max(newest, child.lstat().st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _remove(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path)
        else:
            size = path.stat().st_size
            path.unlink()
    except FileNotFoundError:
        return 0
    return size


@dataclass(frozen=True)
class SweepResult:
    """What one sweep removed."""

    removed: list[Path]
    bytes: int


def sweep_stale_temp(
    temp_dir: Path, blob_root: Path | None, *, older_than: float, now: float | None = None
) -> SweepResult:
    """Remove leftovers of interrupted uploads, publishes and blob writes.

    In ``temp_dir``: a ``{kind}-p{pid}-…`` entry whose process is gone, and any entry whose newest file is
    older than ``older_than`` seconds. Under ``blob_root`` (a local blob store): ``.{name}.part`` and
    ``.{name}.*.tmp`` files older than ``older_than`` seconds (live writes touch theirs constantly).

    Args:
        temp_dir: The server's temp folder (``settings.temp_dir``).
        blob_root: The local blob store's folder, or None for S3.
        older_than: Age in seconds after which a leftover is stale whoever owns it.
        now: The current time (tests).

    Returns:
        The removed paths and the bytes they held.
    """
    cutoff = (now if now is not None else time.time()) - older_than
    removed: list[Path] = []
    freed = 0
    entries = list(temp_dir.iterdir()) if temp_dir.is_dir() else []
    for entry in entries:
        owner = _OWNED.match(entry.name)
        try:
            dead = owner is not None and not _alive(int(owner.group(1)))
            if dead or _newest_mtime(entry) < cutoff:
                freed += _remove(entry)
                removed.append(entry)
        except OSError as exc:  # one unremovable entry must not stop the sweep
            log.warning("cannot sweep %s: %s", entry, exc)
    if blob_root is not None and blob_root.is_dir():
        for path in blob_root.rglob(".*"):
            try:
                if _BLOB_TEMP.match(path.name) and path.is_file() and path.lstat().st_mtime < cutoff:
                    freed += _remove(path)
                    removed.append(path)
            except OSError as exc:
                log.warning("cannot sweep %s: %s", path, exc)
    if removed:
        log.info("swept %d stale temp file(s), %d bytes", len(removed), freed)
    return SweepResult(removed, freed)
