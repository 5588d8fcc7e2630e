"""The TUF image repository, built with python-tuf's Metadata API and stored in the database.

Every version of every role's metadata is kept as the exact bytes served (consistent snapshots), so any
number of server processes serve the same repository. Updates (new targets, re-signed timestamp/snapshot,
key rotation) run inside the caller's transaction under the ``tuf`` lock, so two processes never write
the same version. The layout matches what ``tuf.ngclient.Updater`` fetches:
``/tuf/metadata/{n}.root.json``, ``timestamp.json``, ``{n}.snapshot.json``, ``{n}.targets.json`` and
``/tuf/targets/{sha256}.{name}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from ota.server.db import lock_name
from ota.server.errors import KeyringError, RepositoryError
from ota.server.keys import TUF_ROLES, Keyring
from ota.server.models import TufMetadata

_SERIALIZER = JSONSerializer(compact=True)


@dataclass(frozen=True)
class Expiries:
    """Lifetimes of each role's metadata, in seconds."""

    root: int = 365 * 86400
    targets: int = 365 * 86400
    snapshot: int = 7 * 86400
    timestamp: int = 86400

    def for_role(self, role: str) -> timedelta:
        """Return the lifetime of ``role``."""
        return timedelta(seconds=int(getattr(self, role)))


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class ImageRepository:
    """Reads and writes the TUF metadata rows; signs with the keyring's online keys."""

    def __init__(self, *, keyring: Keyring, expiries: Expiries) -> None:
        """Create the repository manager.

        Args:
            keyring: Keys for every role.
            expiries: Metadata lifetimes.
        """
        self.keyring = keyring
        self.expiries = expiries

    # ---- reading -----------------------------------------------------------------------------------

    @staticmethod
    def latest_version(session: Session, role: str) -> int:
        """Return the newest stored version of ``role`` (0 when none)."""
        value = session.scalar(select(func.max(TufMetadata.version)).where(TufMetadata.role == role))
        return int(value or 0)

    @staticmethod
    def read(session: Session, role: str, version: int | None = None) -> bytes | None:
        """Return the stored bytes of ``role`` at ``version`` (the newest when None), or None."""
        query = select(TufMetadata.data).where(TufMetadata.role == role)
        if version is None:
            query = query.order_by(TufMetadata.version.desc()).limit(1)
        else:
            query = query.where(TufMetadata.version == version)
        data = session.scalar(query)
        return bytes(data) if data is not None else None

    def load(self, session: Session, role: str) -> Metadata[Any]:
        """Parse the newest version of ``role``.

        Raises:
            RepositoryError: The role has no metadata yet, or it does not parse.
        """
        data = self.read(session, role)
        if data is None:
            raise RepositoryError(f"no {role} metadata: the repository is not initialised")
        try:
            return Metadata.from_bytes(data)
        except Exception as exc:  # python-tuf raises DeserializationError and friends
            raise RepositoryError(f"stored {role} metadata does not parse: {exc}") from exc

    def targets(self, session: Session) -> dict[str, TargetFile]:
        """Return the current targets by path.

        Raises:
            RepositoryError: Not initialised.
        """
        signed = self.load(session, "targets").signed
        assert isinstance(signed, Targets)
        return dict(signed.targets)

    # ---- writing -----------------------------------------------------------------------------------

    def _store(
        self, session: Session, metadata: Metadata[Any], signers_role: str, extra: Iterable[Any] = ()
    ) -> bytes:
        metadata.signatures.clear()
        try:
            for signer in [*self.keyring.signers(signers_role), *extra]:
                metadata.sign(signer, append=True)
        except KeyringError:
            raise
        except Exception as exc:  # remote signers raise backend-specific errors
            raise RepositoryError(f"signing {signers_role} failed: {exc}") from exc
        data = metadata.to_bytes(_SERIALIZER)
        role = metadata.signed.type
        session.add(
            TufMetadata(
                role=role, version=metadata.signed.version, data=data, expires=metadata.signed.expires
            )
        )
        session.flush()
        return data

    def initialise(self, session: Session) -> bool:
        """Create version 1 of every role when the repository is empty.

        Args:
            session: A session inside a transaction.

        Returns:
            True when metadata was created, False when it already existed.

        Raises:
            KeyringError: A role lacks online keys (root must be online for the first root).
            RepositoryError: Signing failed.
        """
        lock_name(session, "tuf")
        if self.latest_version(session, "root"):
            return False
        now = _now()
        root = Root(expires=now + self.expiries.for_role("root"), consistent_snapshot=True)
        for role in TUF_ROLES:
            for key in self.keyring.public_keys(role):
                root.add_key(key, role)
            root.roles[role].threshold = self.keyring.roles[role].threshold
        self._store(session, Metadata(root), "root")
        targets = Metadata(Targets(expires=now + self.expiries.for_role("targets")))
        self._store(session, targets, "targets")
        self._write_snapshot_and_timestamp(session, now)
        return True

    def _write_snapshot_and_timestamp(self, session: Session, now: datetime) -> None:
        targets_version = self.latest_version(session, "targets")
        snapshot = Snapshot(
            version=self.latest_version(session, "snapshot") + 1,
            expires=now + self.expiries.for_role("snapshot"),
            meta={"targets.json": MetaFile(targets_version)},
        )
        self._store(session, Metadata(snapshot), "snapshot")
        self._write_timestamp(session, now)

    def _write_timestamp(self, session: Session, now: datetime) -> None:
        timestamp = Timestamp(
            version=self.latest_version(session, "timestamp") + 1,
            expires=now + self.expiries.for_role("timestamp"),
            snapshot_meta=MetaFile(self.latest_version(session, "snapshot")),
        )
        self._store(session, Metadata(timestamp), "timestamp")

    def add_targets(self, session: Session, new_targets: Iterable[TargetFile]) -> int:
        """Add (or replace) targets, then write new targets, snapshot and timestamp versions.

        Args:
            session: A session inside a transaction.
            new_targets: Target files with their custom fields.

        Returns:
            The new targets version.

        Raises:
            RepositoryError: Not initialised, or signing failed.
            KeyringError: The targets key is offline.
        """
        lock_name(session, "tuf")
        metadata = self.load(session, "targets")
        signed = metadata.signed
        assert isinstance(signed, Targets)
        for target in new_targets:
            signed.targets[target.path] = target
        now = _now()
        signed.version += 1
        signed.expires = now + self.expiries.for_role("targets")
        self._store(session, metadata, "targets")
        self._write_snapshot_and_timestamp(session, now)
        return signed.version

    def refresh_online_roles(
        self, session: Session, *, fraction: float = 0.5, force: bool = False
    ) -> list[str]:
        """Re-sign snapshot and/or timestamp when less than ``fraction`` of their lifetime is left.

        Targets is re-signed too when it nears expiry and its key is online.

        Args:
            session: A session inside a transaction.
            fraction: Re-sign when remaining life < fraction × lifetime.
            force: Re-sign timestamp regardless.

        Returns:
            The roles re-signed.

        Raises:
            RepositoryError: Not initialised, or signing failed.
        """
        lock_name(session, "tuf")
        now = _now()
        done: list[str] = []

        def stale(role: str) -> bool:
            expires = self.load(session, role).signed.expires
            return bool(expires - now < self.expiries.for_role(role) * fraction)

        if stale("targets"):
            metadata = self.load(session, "targets")
            metadata.signed.version += 1
            metadata.signed.expires = now + self.expiries.for_role("targets")
            self._store(session, metadata, "targets")
            done.append("targets")
        if done or stale("snapshot"):
            self._write_snapshot_and_timestamp(session, now)
            done += ["snapshot", "timestamp"]
        elif force or stale("timestamp"):
            self._write_timestamp(session, now)
            done.append("timestamp")
        return done

    def rotate_root(self, session: Session, new_keyring: Keyring) -> int:
        """Write a new root with ``new_keyring``'s keys, signed by the old and the new root thresholds.

        Args:
            session: A session inside a transaction.
            new_keyring: The keyring after rotation (``self.keyring`` is the old one).

        Returns:
            The new root version.

        Raises:
            RepositoryError: Not initialised, or signing failed.
            KeyringError: Old or new root keys are not online up to their thresholds.
        """
        lock_name(session, "tuf")
        metadata = self.load(session, "root")
        root = metadata.signed
        assert isinstance(root, Root)
        for role in TUF_ROLES:
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            for key in new_keyring.public_keys(role):
                root.add_key(key, role)
            root.roles[role].threshold = new_keyring.roles[role].threshold
        now = _now()
        root.version += 1
        root.expires = now + self.expiries.for_role("root")
        old_signers = self.keyring.signers("root")
        old_ids = {s.public_key.keyid for s in old_signers}
        extra = [s for s in new_keyring.signers("root") if s.public_key.keyid not in old_ids]
        self._store(session, metadata, "root", extra=extra)
        self.keyring = new_keyring
        # A new targets/snapshot/timestamp key must sign fresh versions so clients can verify them.
        targets = self.load(session, "targets")
        targets.signed.version += 1
        self._store(session, targets, "targets")
        self._write_snapshot_and_timestamp(session, now)
        return root.version
