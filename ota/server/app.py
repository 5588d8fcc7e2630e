"""The OTA server's app factory: FastAPI app, error mapping, hot path, background tasks, health and metrics.

``create_app(settings)`` builds everything (database, keys, repository) when called, never at import
time; ``create_app_from_env`` is the zero-argument factory uvicorn runs (``--factory``). Background tasks
(per process): poll the generation counter for cache invalidation, re-sign timestamp/snapshot before
they expire, tick running rollouts (advance, abort, time out devices), and sweep stale temp files (also
once at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ota.core.errors import (
    DocumentFormatError,
    ExpiredDocumentError,
    IdentityMismatchError,
    OtaError,
    ReplayError,
    SignatureError,
)
from ota.server.assignments import run_jobs
from ota.server.auth import Scope as OperatorScope
from ota.server.auth import authenticate_operator
from ota.server.blobstore import LocalBlobStore
from ota.server.console import mount_console
from ota.server.context import ServerContext, build_context
from ota.server.db import read_counter, transaction
from ota.server.deps import bearer
from ota.server.errors import (
    AuthError,
    BlobStoreError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    KeyringError,
    NotFoundError,
    RepositoryError,
    RolloutStateError,
    ServerError,
)
from ota.server.hotpath import AssignmentHotPath, Receive, Scope, Send
from ota.server.housekeeping import sweep_stale_temp
from ota.server.metrics import make_registry
from ota.server.models import Rollout
from ota.server.rollout_machine import ACTIVE_STATES
from ota.server.routes import devices, operators, tuf
from ota.server.scheduler import scheduler_tick
from ota.server.schemas import ErrorBody
from ota.server.settings import ServerSettings, load_settings

log = logging.getLogger(__name__)

# Most specific first: ``isinstance`` picks the first match.
ERROR_MAP: list[tuple[type[Exception], int, str]] = [
    (ForbiddenError, 403, "forbidden"),
    (AuthError, 401, "unauthorized"),
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (RolloutStateError, 409, "invalid_transition"),
    (InvalidRequestError, 422, "invalid_request"),
    (ReplayError, 403, "replayed_report"),
    (IdentityMismatchError, 403, "identity_mismatch"),
    (SignatureError, 401, "bad_signature"),
    (ExpiredDocumentError, 401, "expired"),
    (DocumentFormatError, 422, "invalid_document"),
    (BlobStoreError, 503, "blob_store_unavailable"),
    (RepositoryError, 503, "repository_unavailable"),
    (KeyringError, 503, "keys_unavailable"),
    # Every connection stayed busy for the pool timeout: overload, so tell the client to come back later.
    (PoolTimeoutError, 503, "database_busy"),
]


def _error_response(exc: Exception) -> JSONResponse:
    for kind, status, code in ERROR_MAP:
        if isinstance(exc, kind):
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return JSONResponse({"error": code, "message": str(exc)}, status_code=status, headers=headers)
    log.exception("unmapped server error", exc_info=exc)
    return JSONResponse({"error": "internal", "message": "internal error"}, status_code=500)


async def _handle_domain_error(_request: Request, exc: Exception) -> Response:
    return _error_response(exc)


async def _handle_unexpected(request: Request, exc: Exception) -> Response:
    # The catch-all: the client gets the JSON error body and no internals. The log names the exception
    # type and the route only; the engine hides SQL parameters (hide_parameters), so no token hash or
    # report body reaches it either way.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal", "message": "internal error"}, status_code=500)


async def _handle_validation(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()[:20]
    ]
    message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
    return JSONResponse({"error": "invalid_request", "message": message, "details": details}, status_code=422)


async def _handle_http(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        {"error": "http_error", "message": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
    )


class BodyLimit:
    """Refuse request bodies over a limit with 413, before any route reads them.

    Routes that stream a body to disk get their own limit (``path_limits``): artifacts (which their route
    also enforces while streaming) and self-test vectors, which are megabytes for ordinary models.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        limit: int,
        path_limits: dict[str, int] | None = None,
    ) -> None:
        """Wrap the app.

        Args:
            app: The inner ASGI app.
            limit: Maximum body size in bytes.
            path_limits: Larger (or smaller) limits for exact paths.
        """
        self.app = app
        self.limit = limit
        self.path_limits = path_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, and count streamed bytes when none is declared."""
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD"}:
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.limit)
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await _send_json(send, 413, b'{"error":"too_large","message":"request body is too large"}')
                return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise InvalidRequestError("request body is too large")
            return message

        await self.app(scope, counted, send)


class RejectNulInUrl:
    """Refuse a NUL character in the path or query string (raw or ``%00``) with 422, before routing.

    PostgreSQL cannot hold NUL in text while SQLite can: refusing it at the edge makes both backends see
    the same requests (request bodies are checked by ``schemas.RequestModel``).
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        """Wrap the app."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 422 to a URL holding NUL; pass everything else on."""
        if scope["type"] == "http":
            raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "replace")
            query: bytes = scope["query_string"]
            if (
                any(b"\x00" in part or b"%00" in part for part in (raw_path, query))
                or "\x00" in scope["path"]
            ):
                body = b'{"error":"invalid_request","message":"the URL must not contain NUL characters"}'
                await _send_json(send, 422, body)
                return
        await self.app(scope, receive, send)


_BASE_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class SecurityHeaders:
    """Add standard security headers to every answer, and ``Cache-Control: no-store`` outside ``/tuf/``.

    Operator and device answers are per-caller and must not be cached by a proxy; the TUF metadata and
    targets set their own caching (versioned files are immutable and meant for CDNs). HSTS is sent when
    the public base URL is https (the server then sits behind TLS).
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, hsts: bool) -> None:
        """Wrap the app.

        Args:
            app: The inner ASGI app.
            hsts: Whether to send ``Strict-Transport-Security``.
        """
        self.app = app
        self.extra = _BASE_SECURITY_HEADERS + ([_HSTS] if hsts else [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Add the headers to the response start message."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith("/tuf/")

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in self.extra if n not in present]
                if not cacheable and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _every(seconds: float, work: Callable[[], Any], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_in_threadpool(work)
        except Exception:  # a background failure must not kill the loop; it is logged and retried
            log.exception("background task %s failed", name)


def _background_jobs(ctx: ServerContext) -> list[tuple[float, Callable[[], Any], str]]:
    settings = ctx.settings

    def refresh_generation() -> None:
        with ctx.sessions() as session:
            ctx.cache.observe(read_counter(session))

    def resign() -> None:
        with transaction(ctx.sessions) as session:
            roles = ctx.repository.refresh_online_roles(session, fraction=settings.resign_fraction)
        if roles:
            log.info("re-signed %s", ", ".join(roles))

    def tick() -> None:
        result = scheduler_tick(ctx.sessions)
        if result is None:
            return  # another process holds the scheduler lock this round
        events, bumped = result
        for rollout_id, event in events.items():
            if event is not None:
                log.info("rollout %s: %s", rollout_id, event.value)
        if bumped is not None:
            ctx.cache.observe(bumped)

    def assignment_jobs() -> None:
        stats = run_jobs(ctx)
        if stats.signed:
            log.info("signed %d assignments in bulk", stats.signed)

    def sweep() -> None:
        blob_root = ctx.blobs.root if isinstance(ctx.blobs, LocalBlobStore) else None
        sweep_stale_temp(settings.temp_dir, blob_root, older_than=settings.stale_temp_seconds)

    return [
        (settings.temp_sweep_interval, sweep, "temp-sweep"),
        (settings.cache_refresh_interval, refresh_generation, "generation"),
        (settings.resign_check_interval, resign, "resign"),
        (settings.rollout_tick_interval, tick, "rollouts"),
        (settings.assignment_job_interval, assignment_jobs, "assignment-jobs"),
    ]


def create_app(settings: ServerSettings | None = None, *, ctx: ServerContext | None = None) -> FastAPI:
    """Build the OTA server app.

    Args:
        settings: Settings (loaded from the environment when None).
        ctx: A pre-built context (tests); built from ``settings`` when None.

    Returns:
        The FastAPI app, with the hot path and body limit in front.

    Raises:
        ServerError: The context cannot be built (see :func:`build_context`).
    """
    context = ctx or build_context(settings or load_settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Sync routes and background jobs run on anyio's worker threads (40 by default) and each holds at
        # most one connection while it runs: with no more threads than connections, none ever waits for one.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = context.settings.db_pool_size + context.settings.db_max_overflow
        # A bulk assignment job signs in a tight loop on a worker thread: hand the GIL back to the event
        # loop after 1 ms instead of 5 ms, so polls answered meanwhile wait less for it.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        jobs = _background_jobs(context)
        # Sweep once at start: what a killed process left behind belongs to no live process any more.
        for _seconds, work, name in jobs:
            if name == "temp-sweep":
                try:
                    await run_in_threadpool(work)
                except Exception:  # housekeeping must not stop the server from starting
                    log.exception("initial temp sweep failed")
        tasks = [asyncio.create_task(_every(s, w, n)) for s, w, n in jobs]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            context.close()

    docs = context.settings.docs_enabled
    app = FastAPI(
        title="EdgeFleet OTA server",
        version="0.1.0",
        description="Signed model releases: TUF image repository, Uptane-style director, staged rollouts.",
        lifespan=lifespan,
        # Off in production unless EDGEFLEET_EXPOSE_DOCS=true: the schema maps every endpoint for a prober.
        openapi_url="/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.state.ctx = context
    for kind in (ServerError, OtaError, PoolTimeoutError):
        app.add_exception_handler(kind, _handle_domain_error)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(Exception, _handle_unexpected)
    app.include_router(tuf.router)
    app.include_router(devices.router)
    app.include_router(operators.router)
    mount_console(app)
    _add_health(app, context)
    # Added last = outermost: security headers wrap every answer (the hot path's too), then NUL-free URLs,
    # then the hot path runs before everything else, then the body limit.
    app.add_middleware(
        BodyLimit,
        limit=context.settings.max_body_bytes,
        path_limits={
            "/v1/releases": context.settings.max_artifact_bytes,
            "/v1/releases/selftest": context.settings.max_selftest_bytes,
        },
    )
    app.add_middleware(AssignmentHotPath, ctx=context)
    app.add_middleware(RejectNulInUrl)
    app.add_middleware(SecurityHeaders, hsts=context.settings.public_base_url.lower().startswith("https://"))
    return app


def _add_health(app: FastAPI, ctx: ServerContext) -> None:
    registry = make_registry(ctx.metrics)

    def rollout_phases() -> dict[str, tuple[int, float, str]]:
        with ctx.sessions() as session:
            rows = session.scalars(select(Rollout).where(Rollout.state.in_([s.value for s in ACTIVE_STATES])))
            return {r.id: (r.phase_index, float(r.phases[r.phase_index]["percent"]), r.state) for r in rows}

    ctx.metrics.rollout_phases = rollout_phases

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "Not ready"}})
    def readyz() -> JSONResponse:
        """Readiness: the database answers and the repository has a timestamp."""
        try:
            with ctx.sessions() as session:
                session.execute(text("SELECT 1"))
                ready = ctx.repository.read(session, "timestamp") is not None
        except Exception as exc:  # any database failure means not ready
            return JSONResponse({"status": "unavailable", "message": str(exc)[:200]}, status_code=503)
        if not ready:
            return JSONResponse({"status": "unavailable", "message": "repository not initialised"}, 503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["health"], responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}})
    def metrics(request: Request) -> Response:
        """Prometheus metrics: polls (and 304 ratio), reports by status, rollout phases.

        Needs an operator token with the read scope unless ``EDGEFLEET_METRICS_PUBLIC=true``.

        Raises:
            AuthError: No or unknown token (and metrics are not public).
            ForbiddenError: The token lacks the read scope.
        """
        if not ctx.settings.metrics_public:
            with ctx.sessions() as session:
                authenticate_operator(session, bearer(request), OperatorScope.READ)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def create_app_from_env() -> FastAPI:
    """Zero-argument factory for ``uvicorn --factory`` (settings from ``EDGEFLEET_*``)."""
    return create_app(load_settings())
