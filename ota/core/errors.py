"""Typed errors shared by the OTA server and the edge agent (``ota.core``).

Everything ``ota.core.manifest`` and ``ota.core.signing`` raise derives from one root, so a caller can catch
the whole family at its boundary and map it to an HTTP status or an agent report::

    OtaError
    ├── DocumentFormatError        a document is malformed: missing field, wrong type, bad value, not JSON
    ├── SignatureError             a signature is missing, malformed, from an unknown key or below threshold
    ├── ExpiredDocumentError       a signed document's ``expires`` lies in the past
    ├── ReplayError                a counter did not increase (replayed or rolled-back document)
    ├── IdentityMismatchError      a document names another device or hardware profile than expected
    └── KeyStoreError              a key file or signer URI cannot be read, written or parsed

The delta engine keeps its own tree (``DeltaError``) beside its code.
"""

from __future__ import annotations


class OtaError(Exception):
    """Root of the errors raised by ``ota.core`` documents and signing helpers."""


class DocumentFormatError(OtaError, ValueError):
    """A document does not have the expected shape (missing field, wrong type, value out of range)."""


class SignatureError(OtaError):
    """A signature is missing, malformed, made by an unknown key, or there are fewer than the threshold."""


class ExpiredDocumentError(OtaError):
    """A signed document is past its ``expires`` time."""


class ReplayError(OtaError):
    """A monotonic counter went backwards or did not advance: a replay or a rollback."""


class IdentityMismatchError(OtaError):
    """A document is about another device (or hardware profile) than the one checking it."""


class KeyStoreError(OtaError):
    """A private or public key cannot be loaded, parsed or stored."""
