"""The server's key folder: TUF role keys (root k-of-n, targets, snapshot, timestamp) and the director key.

``keyring.json`` in the folder lists, per role, the threshold and each key's public half plus the
securesystemslib signer URI of its private half (``file2:<path>`` for the PEM files ``keys init`` writes;
a KMS URI works the same). A key without a URI is offline: its role can be verified but not signed here
(the usual place for root). Private key files are 0600 and written atomically.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer, SSlibKey

from ota.core.errors import DocumentFormatError, KeyStoreError
from ota.core.files import atomic_write_bytes
from ota.core.signing import (
    generate_ed25519_signer,
    key_from_dict,
    key_to_dict,
    load_signer,
    save_private_key,
)
from ota.server.errors import KeyringError

log = logging.getLogger(__name__)

TUF_ROLES = ("root", "targets", "snapshot", "timestamp")
ALL_ROLES = (*TUF_ROLES, "director")
KEYRING_FILE = "keyring.json"


@dataclass
class KeyEntry:
    """One key of a role: its public key and, when online, the URI of its private key."""

    public: SSlibKey
    uri: str | None = None


@dataclass
class RoleKeys:
    """A role's threshold and keys."""

    threshold: int
    keys: list[KeyEntry] = field(default_factory=list)


@dataclass
class Keyring:
    """All roles' keys, as stored in ``keyring.json``.

    Attributes:
        roles: Role name → keys.
        generated: True when the server generated the keys on first start (development keys; production
            refuses them). ``edgefleet keys init`` makes keys meant for production.
        folder: Where the keyring lives.
    """

    roles: dict[str, RoleKeys]
    generated: bool
    folder: Path
    _signers: dict[str, Signer] = field(default_factory=dict, repr=False)

    def public_keys(self, role: str) -> list[SSlibKey]:
        """Return a role's public keys.

        Raises:
            KeyringError: Unknown role.
        """
        return [entry.public for entry in self._role(role).keys]

    def signers(self, role: str) -> list[Signer]:
        """Return signers for every online key of ``role`` (loaded once, then cached).

        Raises:
            KeyringError: Unknown role, fewer online keys than the threshold, or a key fails to load.
        """
        role_keys = self._role(role)
        result: list[Signer] = []
        for entry in role_keys.keys:
            if entry.uri is None:
                continue
            cached = self._signers.get(entry.public.keyid)
            if cached is None:
                try:
                    cached = load_signer(entry.uri, entry.public)
                except KeyStoreError as exc:
                    raise KeyringError(f"{role} key {entry.public.keyid[:12]}: {exc}") from exc
                self._signers[entry.public.keyid] = cached
            result.append(cached)
        if len(result) < role_keys.threshold:
            raise KeyringError(f"{role}: {len(result)} online key(s), threshold is {role_keys.threshold}")
        return result

    def signer(self, role: str) -> Signer:
        """Return the first online signer of a role (for the single-key online roles).

        Raises:
            KeyringError: No online key.
        """
        return self.signers(role)[0]

    def _role(self, role: str) -> RoleKeys:
        try:
            return self.roles[role]
        except KeyError as exc:
            raise KeyringError(f"keyring has no role {role!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form stored in ``keyring.json``."""
        return {
            "generated": self.generated,
            "roles": {
                name: {
                    "threshold": rk.threshold,
                    "keys": [{"public": key_to_dict(e.public), "uri": e.uri} for e in rk.keys],
                }
                for name, rk in self.roles.items()
            },
        }

    def save(self) -> None:
        """Write ``keyring.json`` atomically.

        Raises:
            KeyringError: The file cannot be written.
        """
        try:
            atomic_write_bytes(
                self.folder / KEYRING_FILE, json.dumps(self.to_dict(), indent=1).encode(), mode=0o600
            )
        except OSError as exc:
            raise KeyringError(f"cannot write keyring: {exc}") from exc


def _new_key(folder: Path, name: str) -> KeyEntry:
    signer = generate_ed25519_signer()
    try:
        uri = save_private_key(signer, folder / f"{name}.pem")
    except KeyStoreError as exc:
        raise KeyringError(str(exc)) from exc
    return KeyEntry(public=signer.public_key, uri=uri)


def init_keys(
    folder: Path,
    *,
    root_keys: int = 1,
    root_threshold: int = 1,
    force: bool = False,
    development: bool = False,
) -> Keyring:
    """Generate Ed25519 keys for every role into ``folder`` and write ``keyring.json``.

    Args:
        folder: The key folder (created 0700).
        root_keys: How many root keys (n).
        root_threshold: How many root signatures are required (k ≤ n).
        force: Overwrite an existing keyring.
        development: Mark the keys as server-generated development keys (production refuses those).

    Returns:
        The new keyring.

    Raises:
        KeyringError: Bad k/n, or a keyring exists and ``force`` is False, or files cannot be written.
    """
    if not 1 <= root_threshold <= root_keys:
        raise KeyringError(f"root threshold must be between 1 and the key count ({root_keys})")
    if (folder / KEYRING_FILE).exists() and not force:
        raise KeyringError(f"{folder / KEYRING_FILE} exists; pass force to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    roles = {"root": RoleKeys(root_threshold, [_new_key(folder, f"root-{i + 1}") for i in range(root_keys)])}
    for role in ("targets", "snapshot", "timestamp", "director"):
        roles[role] = RoleKeys(1, [_new_key(folder, role)])
    keyring = Keyring(roles=roles, generated=development, folder=folder)
    keyring.save()
    return keyring


def load_keyring(folder: Path) -> Keyring:
    """Read ``keyring.json`` from ``folder``.

    Args:
        folder: The key folder.

    Returns:
        The keyring (private keys load lazily, on first signature).

    Raises:
        KeyringError: Missing or malformed keyring.
    """
    path = folder / KEYRING_FILE
    try:
        raw = json.loads(path.read_text())
        roles: dict[str, RoleKeys] = {}
        for name, rk in raw["roles"].items():
            entries = [KeyEntry(public=key_from_dict(k["public"]), uri=k.get("uri")) for k in rk["keys"]]
            roles[name] = RoleKeys(int(rk["threshold"]), entries)
    except FileNotFoundError as exc:
        raise KeyringError(f"no keyring at {path}: run `edgefleet keys init`") from exc
    except (OSError, ValueError, KeyError, TypeError, DocumentFormatError) as exc:
        raise KeyringError(f"malformed keyring {path}: {exc}") from exc
    missing = set(ALL_ROLES) - set(roles)
    if missing:
        raise KeyringError(f"keyring {path} lacks role(s): {', '.join(sorted(missing))}")
    return Keyring(roles=roles, generated=bool(raw.get("generated", False)), folder=folder)


def ensure_keyring(folder: Path, *, development: bool) -> Keyring:
    """Load the keyring, generating development keys on first start when allowed.

    Args:
        folder: The key folder.
        development: Whether generated keys are acceptable.

    Returns:
        The keyring.

    Raises:
        KeyringError: No keyring outside development mode, or generated keys outside development mode.
    """
    if not (folder / KEYRING_FILE).exists():
        if not development:
            raise KeyringError(f"no keyring in {folder}; production mode does not generate keys")
        keyring = init_keys(folder, development=True)
        log.warning(
            "GENERATED DEVELOPMENT KEYS in %s: fine for a demo, never for a fleet "
            "(production mode refuses them; use `edgefleet keys init` on an offline machine)",
            folder,
        )
        return keyring
    keyring = load_keyring(folder)
    if keyring.generated and not development:
        raise KeyringError("keys were generated by the server (development keys); production refuses them")
    if keyring.generated:
        log.warning("using DEVELOPMENT KEYS from %s", folder)
    return keyring


def rotate_role_key(keyring: Keyring, role: str, *, count: int = 1, threshold: int | None = None) -> Keyring:
    """Replace a role's keys with freshly generated ones (the caller re-signs metadata).

    Args:
        keyring: The current keyring.
        role: Role to rotate.
        count: How many new keys.
        threshold: New threshold (defaults to the old one, capped at ``count``).

    Returns:
        A new keyring object; the old one is left untouched (root rotation needs both).

    Raises:
        KeyringError: Unknown role or bad threshold.
    """
    old = keyring._role(role)
    new_threshold = threshold if threshold is not None else min(old.threshold, count)
    if not 1 <= new_threshold <= count:
        raise KeyringError(f"threshold must be between 1 and {count}")
    serial = len(list(keyring.folder.glob(f"{role}*.pem"))) + 1
    entries = [_new_key(keyring.folder, f"{role}-r{serial + i}") for i in range(count)]
    roles = dict(keyring.roles)
    roles[role] = RoleKeys(new_threshold, entries)
    return Keyring(roles=roles, generated=keyring.generated, folder=keyring.folder)
