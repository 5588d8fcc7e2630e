"""The device's identity and trust anchors, kept in the agent's state dir.

Layout::

    identity/device_key.pem    Ed25519 private key, PKCS#8 PEM, 0600, created on first start
    identity/device.json       device id and profile label as enrolled, server URLs, the director's key
    identity/tuf/root.json     the trusted TUF root received at enrolment (ngclient's starting point;
                               ngclient itself updates it in that folder as root rotates)

Key handling goes through :mod:`ota.core.signing` so that the server and the agent agree on key ids and
signature formats. Every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, SSlibKey

from ota.core.errors import OtaError
from ota.core.signing import generate_ed25519_signer, key_from_dict, key_to_dict, load_private_key_file
from ota.edge.errors import IdentityError, SlotError
from ota.edge.fsutil import atomic_write_bytes, atomic_write_json, ensure_private_dir

KEY_FILE = "device_key.pem"
DEVICE_FILE = "device.json"
ROOT_FILE = "root.json"


@dataclass(frozen=True)
class Enrolment:
    """What the device learnt when it enrolled.

    Attributes:
        device_id: The id the server knows this device by.
        metadata_url: TUF metadata base URL.
        targets_url: TUF targets base URL.
        director_key: The director's public key dict.
        admission: The admission state last seen (``accepted``, ``pending``, ``rejected``).
        hardware_profile: The profile label the device enrolled with (what the server knows it as);
            empty in enrolments stored before it was kept.
    """

    device_id: str
    metadata_url: str
    targets_url: str
    director_key: dict[str, Any]
    admission: str
    hardware_profile: str = ""

    @property
    def director_public_key(self) -> SSlibKey:
        """Return the director key as a securesystemslib key.

        Raises:
            IdentityError: If the stored key is malformed.
        """
        try:
            return key_from_dict(self.director_key)
        except OtaError as exc:
            raise IdentityError(f"stored director key is invalid: {exc}") from exc


class DeviceIdentity:
    """The device key, enrolment record and trusted TUF root under ``<state_dir>/identity``.

    Args:
        state_dir: The agent's state directory.
    """

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "identity"
        self.key_path = self.directory / KEY_FILE
        self.device_path = self.directory / DEVICE_FILE
        self.tuf_dir = self.directory / "tuf"
        self._signer: CryptoSigner | None = None

    def load_or_create_key(self) -> CryptoSigner:
        """Return the device signer, creating and storing a new Ed25519 key on first start.

        Returns:
            The signer.

        Raises:
            IdentityError: If the key file exists but is unreadable or has wider permissions than 0600,
                or a new key cannot be written.
        """
        if self._signer is not None:
            return self._signer
        try:
            ensure_private_dir(self.directory)
        except SlotError as exc:
            raise IdentityError(str(exc)) from exc
        if self.key_path.exists():
            mode = self.key_path.stat().st_mode & 0o777
            if mode & 0o077:
                raise IdentityError(f"{self.key_path} has mode {mode:o}; a private key must be 0600")
            try:
                self._signer = load_private_key_file(self.key_path)
            except OtaError as exc:
                raise IdentityError(str(exc)) from exc
            return self._signer
        signer = generate_ed25519_signer()
        try:
            atomic_write_bytes(self.key_path, signer.private_bytes, mode=0o600)
        except SlotError as exc:
            raise IdentityError(f"cannot store the device key: {exc}") from exc
        self._signer = signer
        return signer

    @property
    def public_key(self) -> SSlibKey:
        """The device's public key (creates the key pair on first use).

        Raises:
            IdentityError: If the key cannot be loaded or created.
        """
        key = self.load_or_create_key().public_key
        if not isinstance(key, SSlibKey):
            raise IdentityError("device key is not an SSlibKey")
        return key

    def public_key_dict(self) -> dict[str, Any]:
        """Return the public key in the wire format of :func:`ota.core.signing.key_to_dict`.

        Raises:
            IdentityError: If the key cannot be loaded or created.
        """
        return key_to_dict(self.public_key)

    def default_device_id(self) -> str:
        """Return a stable id derived from the public key (``dev-`` plus 20 hex digits of its keyid).

        Raises:
            IdentityError: If the key cannot be loaded or created.
        """
        return f"dev-{self.public_key.keyid[:20]}"

    def store_enrolment(self, enrolment: Enrolment, tuf_root: dict[str, Any]) -> None:
        """Persist the enrolment answer and the trusted root it carried.

        The root is only written when none is stored yet: after that, ngclient updates it through the
        chain of signed roots, and a server must not be able to swap the trust anchor by re-enrolment.

        Args:
            enrolment: What the server answered.
            tuf_root: The root metadata (the whole signed JSON document).

        Raises:
            IdentityError: If a file cannot be written.
        """
        try:
            ensure_private_dir(self.tuf_dir)
            root_path = self.tuf_dir / ROOT_FILE
            if not root_path.exists():
                atomic_write_bytes(root_path, json.dumps(tuf_root).encode())
            atomic_write_json(
                self.device_path,
                {
                    "device_id": enrolment.device_id,
                    "metadata_url": enrolment.metadata_url,
                    "targets_url": enrolment.targets_url,
                    "director_key": enrolment.director_key,
                    "admission": enrolment.admission,
                    "hardware_profile": enrolment.hardware_profile,
                },
            )
        except (OSError, SlotError) as exc:
            raise IdentityError(f"cannot store the enrolment: {exc}") from exc

    def load_enrolment(self) -> Enrolment | None:
        """Return the stored enrolment, or None before the first one.

        Raises:
            IdentityError: If the file exists but is malformed.
        """
        try:
            raw = json.loads(self.device_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise IdentityError(f"cannot read {self.device_path}: {exc}") from exc
        fields = ("device_id", "metadata_url", "targets_url", "director_key", "admission")
        if not isinstance(raw, dict) or any(name not in raw for name in fields):
            raise IdentityError(f"{self.device_path} lacks one of {fields}")
        profile = raw.get("hardware_profile", "")
        enrolment = Enrolment(
            **{name: raw[name] for name in fields},
            hardware_profile=profile if isinstance(profile, str) else "",
        )
        enrolment.director_public_key  # noqa: B018 - validate the key now, not at the first poll
        return enrolment

    @property
    def trusted_root_path(self) -> Path:
        """Where ngclient finds the trusted root."""
        return self.tuf_dir / ROOT_FILE

    def has_trusted_root(self) -> bool:
        """Return True when a trusted root is stored."""
        return self.trusted_root_path.is_file()
