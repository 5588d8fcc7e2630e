"""Credentials of the OTA server: operator and provisioning tokens (stored hashed), device poll tokens.

* Operator tokens (``efo_<id>_<secret>``) carry scopes ``read``, ``release``, ``rollout`` and ``admin``
  (``admin`` implies all). Only the sha256 of the whole token is stored.
* Provisioning tokens (``efp_<id>_<secret>``) let devices enrol; one may auto-accept. Stored hashed too.
* Device tokens are stateless MACs: ``<device_id>.<expiry unix>.<mac>``; checking one is an HMAC, not a
  signature or a database read, which keeps the poll hot path cheap. Challenges are stateless MACs as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from ota.server.errors import AuthError, ForbiddenError, InvalidRequestError
from ota.server.models import OperatorToken, ProvisioningToken


class Scope(StrEnum):
    """Operator token scopes."""

    READ = "read"
    RELEASE = "release"
    ROLLOUT = "rollout"
    ADMIN = "admin"


def hash_token(token: str) -> str:
    """Return the stored form of a token: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(prefix: str) -> tuple[str, str]:
    token_id = secrets.token_hex(6)
    return token_id, f"{prefix}_{token_id}_{secrets.token_urlsafe(24)}"


def parse_scopes(values: Iterable[str]) -> list[str]:
    """Validate scope names.

    Raises:
        InvalidRequestError: An unknown scope, or none.
    """
    result = []
    for value in values:
        try:
            result.append(Scope(value).value)
        except ValueError as exc:
            raise InvalidRequestError(f"unknown scope {value!r}; use {[s.value for s in Scope]}") from exc
    if not result:
        raise InvalidRequestError("at least one scope is required")
    return sorted(set(result))


def create_operator_token(session: Session, *, name: str, scopes: Iterable[str]) -> tuple[OperatorToken, str]:
    """Create an operator token; the clear token is returned once and never stored.

    Args:
        session: A session inside a transaction.
        name: A label for the token.
        scopes: Scope names.

    Returns:
        The row and the clear token.

    Raises:
        InvalidRequestError: Bad scopes.
    """
    token_id, token = _new_token("efo")
    row = OperatorToken(id=token_id, name=name, token_hash=hash_token(token), scopes=parse_scopes(scopes))
    session.add(row)
    return row, token


def create_provisioning_token(
    session: Session, *, name: str, auto_accept: bool = False, group: str | None = None
) -> tuple[ProvisioningToken, str]:
    """Create a provisioning token for device enrolment.

    Args:
        session: A session inside a transaction.
        name: A label.
        auto_accept: Whether devices enrolling with it are accepted without an operator.
        group: Group assigned to devices enrolling with it (when they name none).

    Returns:
        The row and the clear token.
    """
    token_id, token = _new_token("efp")
    row = ProvisioningToken(
        id=token_id, name=name, token_hash=hash_token(token), auto_accept=auto_accept, group=group
    )
    session.add(row)
    return row, token


def authenticate_operator(session: Session, token: str | None, scope: Scope) -> OperatorToken:
    """Check an operator bearer token and its scope.

    Args:
        session: An open session.
        token: The bearer token (None when the header was missing).
        scope: The scope the endpoint needs.

    Returns:
        The token row.

    Raises:
        AuthError: Missing, unknown or revoked token.
        ForbiddenError: The token lacks the scope.
    """
    if not token or not token.startswith("efo_") or len(token) > 256:
        raise AuthError("an operator token is required (Authorization: Bearer efo_...)")
    row = session.scalar(select(OperatorToken).where(OperatorToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        raise AuthError("unknown or revoked operator token")
    if Scope.ADMIN.value not in row.scopes and scope.value not in row.scopes:
        raise ForbiddenError(f"this token lacks the {scope.value!r} scope")
    return row


def find_provisioning_token(session: Session, token: str) -> ProvisioningToken:
    """Return the live provisioning token matching ``token``.

    Raises:
        AuthError: Unknown or revoked.
    """
    row = session.scalar(select(ProvisioningToken).where(ProvisioningToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        raise AuthError("unknown or revoked provisioning token")
    return row


class DeviceTokens:
    """Issues and checks stateless MAC tokens and challenges for devices."""

    def __init__(self, *, secret: str, token_ttl: int, challenge_ttl: int) -> None:
        """Create the issuer.

        Args:
            secret: The server-wide MAC secret (shared by every process).
            token_ttl: Token lifetime in seconds.
            challenge_ttl: Challenge lifetime in seconds.
        """
        self._key = hashlib.sha256(b"edgefleet-device-mac|" + secret.encode()).digest()
        self.token_ttl = token_ttl
        self.challenge_ttl = challenge_ttl

    def _mac(self, *parts: str) -> str:
        digest = hmac.new(self._key, "|".join(parts).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def issue(self, device_id: str, now: float | None = None) -> tuple[str, datetime]:
        """Issue a poll token for an accepted device.

        Returns:
            The token and its expiry.
        """
        expires = int((now or time.time()) + self.token_ttl)
        token = f"{device_id}.{expires}.{self._mac('token', device_id, str(expires))}"
        return token, datetime.fromtimestamp(expires, UTC)

    def device_of(self, token: str, now: float | None = None) -> str | None:
        """Return the device id a valid, unexpired token belongs to, else None (cheap: one HMAC)."""
        parts = token.rsplit(".", 2)
        # isascii: a header decodes as latin-1 and str.isdigit accepts other scripts' digits.
        if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()):
            return None
        device_id, expires, mac = parts
        if int(expires) < (now or time.time()):
            return None
        # Compared as bytes: compare_digest refuses str with non-ASCII characters (a 500 before).
        if not hmac.compare_digest(mac.encode(), self._mac("token", device_id, expires).encode()):
            return None
        return device_id

    def challenge(self, device_id: str, now: float | None = None) -> tuple[str, datetime]:
        """Make a stateless challenge nonce bound to ``device_id``.

        Returns:
            The nonce and its expiry.
        """
        expires = int((now or time.time()) + self.challenge_ttl)
        rand = secrets.token_urlsafe(12)
        nonce = f"{expires}.{rand}.{self._mac('challenge', device_id, str(expires), rand)}"
        return nonce, datetime.fromtimestamp(expires, UTC)

    def check_challenge(self, device_id: str, nonce: str, now: float | None = None) -> None:
        """Check that ``nonce`` was issued by this server for ``device_id`` and has not expired.

        Raises:
            AuthError: Forged, foreign or expired nonce.
        """
        parts = nonce.split(".")
        if len(parts) != 3 or not (parts[0].isascii() and parts[0].isdigit()):
            raise AuthError("malformed challenge nonce")
        expires, rand, mac = parts
        if not hmac.compare_digest(mac.encode(), self._mac("challenge", device_id, expires, rand).encode()):
            raise AuthError("challenge nonce was not issued for this device")
        if int(expires) < (now or time.time()):
            raise AuthError("challenge nonce expired; ask for a new one")
