"""FastAPI dependency aliases: the context, a session, operator scopes and the calling device.

Routes declare what they need with these aliases (``ContextDep``, ``ReadOperator``, ``DeviceIdDep`` ...),
so authentication lives in one place and every endpoint states its scope in its signature.

There is deliberately no session dependency: a route opens ``ctx.transaction()`` in its body, so its
connection never outlives the worker thread that uses it (see :meth:`ServerContext.transaction`).
Dependencies that read the database (operator authentication) close their own short session before
returning, so a request never holds two connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Path, Request

from ota.core.manifest import DEVICE_ID_PATTERN
from ota.server.auth import Scope, authenticate_operator
from ota.server.context import ServerContext
from ota.server.errors import AuthError, ForbiddenError
from ota.server.models import OperatorToken


def get_context(request: Request) -> ServerContext:
    """Return the process's server context."""
    ctx: ServerContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[ServerContext, Depends(get_context)]


def bearer(request: Request) -> str | None:
    """Return the bearer token of the request, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def require(scope: Scope) -> Callable[[Request, ServerContext], OperatorToken]:
    """Build a dependency that authenticates an operator token holding ``scope``."""

    def check(request: Request, ctx: ContextDep) -> OperatorToken:
        # A separate short session: authentication must not share the route's transaction.
        with ctx.sessions() as session:
            return authenticate_operator(session, bearer(request), scope)

    return check


ReadOperator = Annotated[OperatorToken, Depends(require(Scope.READ))]
ReleaseOperator = Annotated[OperatorToken, Depends(require(Scope.RELEASE))]
RolloutOperator = Annotated[OperatorToken, Depends(require(Scope.ROLLOUT))]
AdminOperator = Annotated[OperatorToken, Depends(require(Scope.ADMIN))]

DevicePath = Annotated[
    str, Path(pattern=DEVICE_ID_PATTERN.pattern, max_length=64, description="The device id")
]


def calling_device(request: Request, device_id: DevicePath, ctx: ContextDep) -> str:
    """Authenticate the device token and check it names the device in the path.

    Raises:
        AuthError: No or invalid token.
        ForbiddenError: The token belongs to another device.
    """
    token = bearer(request)
    if token is None:
        raise AuthError("a device token is required (Authorization: Bearer <token from /token>)")
    owner = ctx.tokens.device_of(token)
    if owner is None:
        raise AuthError("invalid or expired device token")
    if owner != device_id:
        raise ForbiddenError("a device can only act as itself")
    return device_id


DeviceIdDep = Annotated[str, Depends(calling_device)]
