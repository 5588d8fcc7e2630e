"""A/B model slots on disk: two directories, a staging area, and the application-facing ``current`` link.

Layout under the agent's state dir::

    slots/a/model.onnx, slots/a/selftest.npz     one slot
    slots/b/...                                  the other
    staging/                                     partial downloads and patches (kept across restarts)
    current -> slots/a                           stable path for applications; moved only on commit

Which slot the device runs, which one is committed and which one is on trial is recorded in the state
file (:mod:`ota.edge.state`), and that file *is* the atomically switched pointer: one ``os.replace``
moves the device from one slot to the other. An update only ever writes the slot that is not committed,
so the committed model survives any failure, and the device never ends up with no working model.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Literal

from ota.edge.errors import SlotError
from ota.edge.fsutil import atomic_symlink, ensure_private_dir, fsync_dir, sha256_file

SlotName = Literal["a", "b"]
SLOT_NAMES: tuple[SlotName, SlotName] = ("a", "b")
MODEL_FILE = "model.onnx"
VECTORS_FILE = "selftest.npz"


def other_slot(slot: SlotName | None) -> SlotName:
    """Return the slot an update may write, given the committed one (``a`` when nothing is committed).

    Args:
        slot: The committed slot, or None on a fresh device.

    Returns:
        The other slot.
    """
    return "b" if slot == "a" else "a"


def parse_slot(value: object) -> SlotName | None:
    """Validate a slot name read from disk.

    Args:
        value: A value from the state file.

    Returns:
        The slot name, or None when ``value`` is None.

    Raises:
        SlotError: If the value is neither None nor a known slot name.
    """
    if value is None:
        return None
    if value == "a":
        return "a"
    if value == "b":
        return "b"
    raise SlotError(f"unknown slot name {value!r}; expected 'a' or 'b'")


class SlotStore:
    """Files of the two slots and the staging area under one root directory.

    Args:
        root: The agent's state directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / "staging"
        self.current_link = root / "current"

    def ensure_layout(self) -> None:
        """Create the slot and staging directories if they are missing.

        Raises:
            SlotError: If a directory cannot be created.
        """
        for directory in (self.root / "slots", *(self.slot_dir(slot) for slot in SLOT_NAMES), self.staging):
            ensure_private_dir(directory)

    def slot_dir(self, slot: SlotName) -> Path:
        """Return the directory of ``slot``."""
        return self.root / "slots" / slot

    def model_path(self, slot: SlotName) -> Path:
        """Return the model file of ``slot`` (it may not exist)."""
        return self.slot_dir(slot) / MODEL_FILE

    def vectors_path(self, slot: SlotName) -> Path:
        """Return the self-test vectors file of ``slot`` (it may not exist)."""
        return self.slot_dir(slot) / VECTORS_FILE

    def staging_path(self, name: str) -> Path:
        """Return a file in the staging area.

        Args:
            name: A file name chosen by the agent (a sha256 plus a suffix), never a server-given path.

        Raises:
            SlotError: If ``name`` would leave the staging directory.
        """
        if not name or "/" in name or "\\" in name or name in {".", ".."} or "\x00" in name:
            raise SlotError(f"refusing staging file name {name!r}")
        return self.staging / name

    def model_sha256(self, slot: SlotName) -> str | None:
        """Hash the model in ``slot``.

        Returns:
            The hex sha256, or None when the slot holds no model.

        Raises:
            SlotError: If the model exists but cannot be read.
        """
        path = self.model_path(slot)
        if not path.is_file():
            return None
        return sha256_file(path)

    def install_file(self, source: Path, destination: Path) -> None:
        """Move a verified file into a slot with a rename, and make the rename durable.

        Args:
            source: A complete file in the staging area (same filesystem as the slots).
            destination: Its path inside a slot directory.

        Raises:
            SlotError: If the rename fails.
        """
        try:
            source.replace(destination)
        except OSError as exc:
            raise SlotError(f"cannot move {source} into {destination}: {exc}") from exc
        fsync_dir(destination.parent)

    def clear_slot(self, slot: SlotName) -> None:
        """Empty ``slot`` before an update writes it, so no stale file is mistaken for the new one.

        Raises:
            SlotError: If the files cannot be removed.
        """
        directory = self.slot_dir(slot)
        try:
            for entry in directory.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        except FileNotFoundError:
            ensure_private_dir(directory)
        except OSError as exc:
            raise SlotError(f"cannot clear slot {slot}: {exc}") from exc
        fsync_dir(directory)

    def clear_staging(self, *, keep: set[str] | None = None) -> None:
        """Delete staging files except those named in ``keep`` (partial downloads still wanted).

        Raises:
            SlotError: If the staging directory cannot be listed.
        """
        keep = keep or set()
        try:
            entries = list(self.staging.iterdir())
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SlotError(f"cannot list {self.staging}: {exc}") from exc
        for entry in entries:
            if entry.name not in keep:
                with contextlib.suppress(OSError):
                    entry.unlink()

    def point_current(self, slot: SlotName) -> None:
        """Move the application-facing ``current`` link to ``slot`` atomically.

        Raises:
            SlotError: If the link cannot be replaced.
        """
        atomic_symlink(self.current_link, f"slots/{slot}")

    def current_target(self) -> SlotName | None:
        """Return the slot ``current`` points at, or None when there is no valid link."""
        try:
            target = self.current_link.readlink()
        except OSError:
            return None
        with contextlib.suppress(SlotError):
            return parse_slot(target.name) if target.parent == Path("slots") else None
        return None
