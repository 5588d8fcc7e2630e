"""Typed errors of the OTA server (``ota.server``); routes map them to HTTP answers at one boundary.

::

    ServerError
    ├── ConfigError              settings are unusable (default secrets outside development, bad URL)
    ├── BlobStoreError           the blob store failed
    │   └── BlobNotFoundError    no blob under that key
    ├── KeyringError             TUF/director keys are missing, unreadable or inconsistent
    ├── RepositoryError          the TUF image repository cannot be read or updated
    ├── NotFoundError            an id names nothing (404)
    ├── ConflictError            the request contradicts stored state (409)
    ├── InvalidRequestError      well-formed JSON with unacceptable values (422)
    ├── AuthError                missing or bad credentials (401)
    │   └── ForbiddenError       authenticated, but not allowed (403)
    └── RolloutStateError        a rollout transition that the state machine does not allow (409)
"""

from __future__ import annotations


class ServerError(Exception):
    """Root of every error the OTA server raises on purpose."""


class ConfigError(ServerError):
    """The settings cannot be used as given."""


class BlobStoreError(ServerError):
    """The blob store failed to read or write."""


class BlobNotFoundError(BlobStoreError):
    """No blob exists under the requested key."""


class KeyringError(ServerError):
    """Keys are missing, unreadable, or do not match the stored metadata."""


class RepositoryError(ServerError):
    """The TUF image repository cannot be read or updated."""


class NotFoundError(ServerError):
    """The requested object does not exist."""


class ConflictError(ServerError):
    """The request contradicts stored state."""


class InvalidRequestError(ServerError):
    """The request is well-formed but its values are unacceptable."""


class AuthError(ServerError):
    """Credentials are missing or invalid."""


class ForbiddenError(AuthError):
    """Credentials are valid but do not allow this action."""


class RolloutStateError(ServerError):
    """The rollout state machine does not allow this transition."""
