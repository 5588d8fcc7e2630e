"""Console sign-in: an operator token is exchanged for a server-side session; CSRF tokens; cookie flags.

* The browser holds only a random session id (cookie ``ef_console``: HttpOnly, SameSite=Strict, path
  ``/console``, Secure when the request came over HTTPS or the public URL is HTTPS). The database holds
  its sha256, the operator token it was opened with, a CSRF token and an expiry.
* Every request re-checks the operator token through :func:`ota.server.auth.authenticate_operator`'s
  rules (revoked → signed out; scopes as the API has them), so the console grants exactly what the token
  grants on the API.
* Every state-changing request must carry the session's CSRF token (a hidden form field); the sign-in form
  uses a double-submit cookie instead, since no session exists yet.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from ota.server.auth import Scope, authenticate_operator
from ota.server.errors import AuthError
from ota.server.models import ConsoleSession, OperatorToken

SESSION_COOKIE = "ef_console"
LOGIN_COOKIE = "ef_console_login"
COOKIE_PATH = "/console"
SESSION_TTL = timedelta(hours=8)
LOGIN_TTL_SECONDS = 600


class CsrfError(Exception):
    """A state-changing request without the right CSRF token."""


@dataclass(frozen=True)
class Operator:
    """Who is signed in: the operator token's id, name and scopes, and the session's CSRF token."""

    token_id: str
    name: str
    scopes: frozenset[str]
    csrf: str

    def can(self, scope: Scope) -> bool:
        """Whether the token holds ``scope`` (``admin`` holds every scope), as the API decides."""
        return Scope.ADMIN.value in self.scopes or scope.value in self.scopes

    @property
    def actor(self) -> str:
        """The audit log's name for this operator: the same as the API's."""
        return f"token:{self.token_id}"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def is_secure(request: Request, public_base_url: str) -> bool:
    """Whether cookies must be ``Secure``: HTTPS here (uvicorn applies X-Forwarded-Proto from trusted
    proxies), or a public URL that is HTTPS (the server sits behind a TLS proxy)."""
    return request.url.scheme == "https" or public_base_url.lower().startswith("https://")


def open_session(session: Session, token: str, *, now: datetime | None = None) -> tuple[str, Operator]:
    """Check an operator token (read scope at least) and open a console session for it.

    Args:
        session: A session inside a transaction.
        token: The clear operator token typed at sign-in.
        now: Current time (tests).

    Returns:
        The session id to put in the cookie, and the operator.

    Raises:
        AuthError: Unknown, revoked or malformed token.
        ForbiddenError: The token lacks the read scope.
    """
    row = authenticate_operator(session, token.strip(), Scope.READ)
    moment = now or datetime.now(UTC)
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < moment))
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    session.add(
        ConsoleSession(
            id_hash=_digest(session_id),
            token_id=row.id,
            csrf_token=csrf,
            created_at=moment,
            expires_at=moment + SESSION_TTL,
        )
    )
    return session_id, Operator(row.id, row.name, frozenset(row.scopes), csrf)


def current_operator(session: Session, session_id: str | None, *, now: datetime | None = None) -> Operator:
    """Return the operator of a live session.

    Raises:
        AuthError: No cookie, an unknown or expired session, or its token was revoked since.
    """
    if not session_id or len(session_id) > 128:
        raise AuthError("not signed in")
    moment = now or datetime.now(UTC)
    found = session.execute(
        select(ConsoleSession, OperatorToken)
        .join(OperatorToken, OperatorToken.id == ConsoleSession.token_id)
        .where(ConsoleSession.id_hash == _digest(session_id))
    ).first()
    if found is None:
        raise AuthError("not signed in")
    row, token = found
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires < moment or token.revoked_at is not None:
        raise AuthError("the session ended; sign in again")
    return Operator(token.id, token.name, frozenset(token.scopes), row.csrf_token)


def close_session(session: Session, session_id: str | None) -> None:
    """Delete a session (sign out); unknown ids are ignored."""
    if session_id:
        session.execute(delete(ConsoleSession).where(ConsoleSession.id_hash == _digest(session_id)))


def check_csrf(expected: str, given: str | None) -> None:
    """Compare a submitted CSRF token with the expected one in constant time.

    Raises:
        CsrfError: Missing or wrong.
    """
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfError("missing or invalid CSRF token: reload the page and try again")


def login_nonce() -> str:
    """A fresh double-submit value for the sign-in form (cookie and hidden field)."""
    return secrets.token_urlsafe(24)


def set_cookie(response: Response, name: str, value: str, *, secure: bool, max_age: int) -> None:
    """Set a console cookie: HttpOnly, SameSite=Strict, path ``/console``, Secure when asked."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
    )
