"""Ed25519 keys, canonical JSON and signed envelopes shared by the OTA server and the edge agent.

Sits in ``ota.core`` (no server dependencies): the agent signs its enrolment, token requests and status
reports with these helpers, and verifies the director's assignments with them; the server does the reverse.

Keys are securesystemslib objects (``SSlibKey`` for public keys, any ``Signer`` for private keys), the same
types python-tuf's Metadata API uses, so a KMS or HSM signer can replace a key file by changing its URI.
Private keys on disk are PEM/PKCS#8 files loaded through the ``file2:<path>`` signer URI.

A signed document travels as a TUF-style envelope::

    {"signed": {...}, "signatures": [{"keyid": "<hex>", "sig": "<hex>"}]}

The signature covers :func:`canonical_json` of ``signed``: UTF-8 JSON with sorted keys, no insignificant
whitespace and no NaN/Infinity. Floats are allowed (both ends are Python, whose ``repr`` round-trips).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import CryptoSigner, Key, Signature, Signer, SSlibKey

from ota.core.errors import DocumentFormatError, KeyStoreError, SignatureError
from ota.core.files import atomic_write_bytes

ED25519 = "ed25519"
# Ed25519 raw public keys are 32 bytes, i.e. 64 hex digits; signatures are 64 bytes (128 hex digits).
_PUBLIC_HEX_LEN = 64
_SIGNATURE_HEX_LEN = 128
# An envelope with more signatures than this is refused before any crypto runs (cheap DoS guard).
MAX_SIGNATURES = 16


def canonical_json(document: Any) -> bytes:
    """Encode a JSON-able value deterministically: the bytes every signature in EdgeFleet covers.

    Args:
        document: A value made of dicts with string keys, lists, strings, ints, floats, bools and None.

    Returns:
        UTF-8 JSON with sorted keys and no whitespace.

    Raises:
        DocumentFormatError: The value is not JSON-serialisable (or holds NaN/Infinity).
    """
    try:
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise DocumentFormatError(f"document is not canonical-JSON serialisable: {exc}") from exc


def generate_ed25519_signer() -> CryptoSigner:
    """Create a new Ed25519 key pair as a securesystemslib ``CryptoSigner``.

    Returns:
        A signer whose ``public_key`` is an ``SSlibKey`` with a keyid computed by securesystemslib.
    """
    return CryptoSigner.generate_ed25519()


def save_private_key(signer: CryptoSigner, path: Path) -> str:
    """Store a signer's private key as PEM/PKCS#8 with 0600 permissions, atomically.

    Args:
        signer: The key pair to store.
        path: Destination file.

    Returns:
        The signer URI (``file2:<absolute path>``) that :func:`load_signer` accepts.

    Raises:
        KeyStoreError: The file cannot be written.
    """
    try:
        atomic_write_bytes(path, signer.private_bytes, mode=0o600)
    except OSError as exc:
        raise KeyStoreError(f"cannot write private key {path}: {exc}") from exc
    return f"{CryptoSigner.SCHEME}:{path.resolve()}"


def load_private_key_file(path: Path) -> CryptoSigner:
    """Load a PEM/PKCS#8 Ed25519 private key file without knowing its public key in advance.

    Args:
        path: The key file written by :func:`save_private_key`.

    Returns:
        A ``CryptoSigner`` whose public key is derived from the private key.

    Raises:
        KeyStoreError: The file is missing, unreadable, not PEM, or not an Ed25519 key.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private_key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyStoreError(f"cannot load private key {path}: {exc}") from exc
    if not isinstance(private_key, Ed25519PrivateKey):
        raise KeyStoreError(f"{path} is not an Ed25519 private key")
    public = SSlibKey.from_crypto(private_key.public_key(), scheme=ED25519)
    return CryptoSigner(private_key, public)


def load_signer(uri: str, public_key: Key) -> Signer:
    """Load a private key through a securesystemslib signer URI (``file2:``, ``gcpkms:``, ``awskms:`` ...).

    Args:
        uri: The private key URI.
        public_key: The matching public key (securesystemslib needs it to pick the scheme).

    Returns:
        A ``Signer``.

    Raises:
        KeyStoreError: The URI scheme is unknown, the key cannot be read, or it does not match.
    """
    try:
        return Signer.from_priv_key_uri(uri, public_key)
    except Exception as exc:  # securesystemslib raises ValueError/OSError/its own errors per backend
        raise KeyStoreError(f"cannot load signer {uri!r}: {exc}") from exc


def key_to_dict(key: Key) -> dict[str, Any]:
    """Serialise a public key with its keyid: ``{"keyid", "keytype", "scheme", "keyval": {"public"}}``.

    Args:
        key: A securesystemslib public key.

    Returns:
        A JSON-able dict that :func:`key_from_dict` reads back.
    """
    return {"keyid": key.keyid, **key.to_dict()}


def compute_keyid(key_dict: Mapping[str, Any]) -> str:
    """Compute a key's id the way TUF does: sha256 of the canonical JSON of its dict (without keyid).

    Args:
        key_dict: ``{"keytype", "scheme", "keyval": {"public"}}``.

    Returns:
        Lower-case hex sha256.

    Raises:
        DocumentFormatError: The dict is not serialisable.
    """
    body = {k: v for k, v in key_dict.items() if k != "keyid"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def key_from_dict(key_dict: Any) -> SSlibKey:
    """Parse and validate an Ed25519 public key dict (as sent at enrolment or stored by the agent).

    The keyid is always recomputed from the key material, so a sender cannot choose another key's id.

    Args:
        key_dict: ``{"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "<64 hex>"}}``; a
            ``keyid`` member is ignored.

    Returns:
        The public key.

    Raises:
        DocumentFormatError: Not a dict, not Ed25519, or the public value is not 32 bytes of hex.
    """
    if not isinstance(key_dict, Mapping):
        raise DocumentFormatError("public key must be a JSON object")
    if key_dict.get("keytype") != ED25519 or key_dict.get("scheme") != ED25519:
        raise DocumentFormatError("public key must have keytype and scheme 'ed25519'")
    keyval = key_dict.get("keyval")
    public = keyval.get("public") if isinstance(keyval, Mapping) else None
    if not isinstance(public, str) or len(public) != _PUBLIC_HEX_LEN:
        raise DocumentFormatError("public key keyval.public must be 64 hex digits")
    try:
        bytes.fromhex(public)
    except ValueError as exc:
        raise DocumentFormatError("public key keyval.public is not hex") from exc
    clean = {"keytype": ED25519, "scheme": ED25519, "keyval": {"public": public.lower()}}
    return SSlibKey.from_dict(compute_keyid(clean), dict(clean))


def sign_document(signed: Mapping[str, Any], signers: Sequence[Signer]) -> dict[str, Any]:
    """Wrap ``signed`` in an envelope signed by every signer over its canonical JSON.

    Args:
        signed: The document body.
        signers: One or more signers (threshold signing passes several).

    Returns:
        ``{"signed": signed, "signatures": [{"keyid", "sig"}, ...]}``.

    Raises:
        DocumentFormatError: ``signed`` is not canonical-JSON serialisable.
        SignatureError: No signer was given, or a signer failed.
    """
    if not signers:
        raise SignatureError("at least one signer is required")
    payload = canonical_json(signed)
    signatures = []
    for signer in signers:
        try:
            signature = signer.sign(payload)
        except Exception as exc:  # remote signers raise backend-specific errors
            raise SignatureError(f"signer {signer.public_key.keyid} failed: {exc}") from exc
        signatures.append({"keyid": signature.keyid, "sig": signature.signature})
    return {"signed": dict(signed), "signatures": signatures}


def parse_envelope(raw: bytes | str | Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Check the envelope's shape and return its ``signed`` body and signature list, unverified.

    Args:
        raw: JSON bytes/text or an already-parsed dict.

    Returns:
        ``(signed, signatures)``.

    Raises:
        DocumentFormatError: Not JSON, not an object, or ``signed``/``signatures`` malformed.
    """
    if isinstance(raw, bytes | str):
        try:
            raw = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DocumentFormatError(f"envelope is not valid JSON: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise DocumentFormatError("envelope must be a JSON object")
    signed = raw.get("signed")
    signatures = raw.get("signatures")
    if not isinstance(signed, dict):
        raise DocumentFormatError("envelope 'signed' must be a JSON object")
    if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES:
        raise DocumentFormatError(f"envelope 'signatures' must be a list of at most {MAX_SIGNATURES}")
    clean: list[dict[str, str]] = []
    for entry in signatures:
        if (
            not isinstance(entry, Mapping)
            or not isinstance(entry.get("keyid"), str)
            or not isinstance(entry.get("sig"), str)
        ):
            raise DocumentFormatError("each signature must be {'keyid': str, 'sig': str}")
        clean.append({"keyid": entry["keyid"], "sig": entry["sig"]})
    return signed, clean


def verify_document(
    raw: bytes | str | Mapping[str, Any],
    keys: Sequence[Key],
    *,
    threshold: int = 1,
) -> dict[str, Any]:
    """Verify an envelope against trusted keys and return its ``signed`` body.

    Each trusted key counts at most once, signatures from unknown keys are ignored, and a malformed
    signature from a known key counts as invalid (it does not raise on its own).

    Args:
        raw: The envelope (JSON bytes/text or a parsed dict).
        keys: The trusted public keys.
        threshold: How many distinct trusted keys must have signed.

    Returns:
        The verified ``signed`` body.

    Raises:
        DocumentFormatError: The envelope is malformed.
        SignatureError: Fewer than ``threshold`` valid signatures from trusted keys.
    """
    signed, signatures = parse_envelope(raw)
    payload = canonical_json(signed)
    trusted = {key.keyid: key for key in keys}
    valid: set[str] = set()
    for entry in signatures:
        key = trusted.get(entry["keyid"])
        if key is None or entry["keyid"] in valid or len(entry["sig"]) != _SIGNATURE_HEX_LEN:
            continue
        try:
            key.verify_signature(Signature(entry["keyid"], entry["sig"]), payload)
        except UnverifiedSignatureError:
            continue
        valid.add(entry["keyid"])
    if len(valid) < max(threshold, 1):
        raise SignatureError(f"{len(valid)} valid signature(s) from trusted keys, {threshold} required")
    return signed
