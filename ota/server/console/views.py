"""The console's routes: sign-in and out, the read views, and the rollout actions (HTML over HTTP).

Pages are rendered on the server with Jinja2 (autoescaped); the only script is the vendored
``static/console.js`` (confirm dialogs, and polling the live rollout fragment), so the Content-Security-
Policy allows no inline script or style at all. State-changing requests are POST forms carrying the
session's CSRF token; they call the same service functions as the API routes (``create_rollout``,
``control_rollout``), inside the same kind of transaction, so an action has the same effect and audit entry
whichever way it came, with the operator's reason added.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import ValidationError
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ota.core.manifest import AdmissionState
from ota.server.auth import Scope
from ota.server.console import queries
from ota.server.console.sessions import (
    LOGIN_COOKIE,
    LOGIN_TTL_SECONDS,
    SESSION_COOKIE,
    SESSION_TTL,
    CsrfError,
    Operator,
    check_csrf,
    close_session,
    current_operator,
    is_secure,
    login_nonce,
    open_session,
    set_cookie,
)
from ota.server.context import ServerContext
from ota.server.errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    RolloutStateError,
    ServerError,
)
from ota.server.models import AuditEntry, Rollout
from ota.server.rollout_machine import TRANSITIONS, RolloutEvent, RolloutState
from ota.server.rollouts import control_rollout
from ota.server.routes.operators import rollout_from_request
from ota.server.schemas import RolloutCreate
from ota.server.status_cli import rollout_report

HERE = Path(__file__).parent
STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
#: No inline script or style, no framing, forms post only here, and nothing loads from elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
MAX_FORM_BYTES = 16 * 1024
ACTION_LABELS = {
    RolloutEvent.PAUSE: "Pause",
    RolloutEvent.RESUME: "Resume",
    RolloutEvent.ADVANCE: "Advance",
    RolloutEvent.ABORT: "Abort",
    RolloutEvent.ROLLBACK: "Roll back",
}

router = APIRouter(prefix="/console", include_in_schema=False)


# --- rendering -----------------------------------------------------------------------------------------


def _ago(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - queries.aware(moment)).total_seconds()
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def _size(value: int | None) -> str:
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"


def _when(moment: datetime | None) -> str:
    return "–" if moment is None else queries.aware(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters.update(ago=_ago, size=_size, when=_when)
TEMPLATES.globals.update(Scope=Scope, urlencode=urlencode)


#: The app sends ``no-referrer`` everywhere; under it Chromium sends ``Origin: null`` with a form's POST,
#: which the origin check must refuse. ``same-origin`` keeps referrers off other sites, the Origin real.
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "same-origin"}


def _html(template: str, code: int = 200, **values: Any) -> HTMLResponse:
    body = TEMPLATES.get_template(template).render(**values)
    return HTMLResponse(body, status_code=code, headers=PAGE_HEADERS)


def _error_page(operator: Operator | None, status: int, message: str) -> HTMLResponse:
    return _html("error.html", status, operator=operator, status=status, message=message, active="")


def _status_of(exc: Exception) -> int:
    for kind, status in (
        (ForbiddenError, 403),
        (AuthError, 401),
        (NotFoundError, 404),
        (ConflictError, 409),
        (RolloutStateError, 409),
        (InvalidRequestError, 422),
        (CsrfError, 403),
    ):
        if isinstance(exc, kind):
            return status
    return 503


def _ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def _signed_in(request: Request) -> Operator | None:
    ctx = _ctx(request)
    try:
        with ctx.sessions() as session:
            return current_operator(session, request.cookies.get(SESSION_COOKIE))
    except AuthError:
        return None


def _view(
    request: Request,
    scope: Scope,
    render: Callable[[ServerContext, Operator], Response],
    *,
    fragment: bool = False,
) -> Response:
    """Run a read view: signed out → the sign-in page (a fragment: 401); lacking ``scope`` → 403; else
    ``render``."""
    operator = _signed_in(request)
    if operator is None:
        if fragment:
            return _error_page(None, 401, "not signed in")
        return RedirectResponse("/console/login", status_code=303)
    if not operator.can(scope):
        return _error_page(operator, 403, f"this token lacks the {scope.value!r} scope")
    try:
        return render(_ctx(request), operator)
    except ServerError as exc:
        return _error_page(operator, _status_of(exc), str(exc))


async def _form(request: Request) -> dict[str, str]:
    """Parse a URL-encoded form body (the only kind the console posts), first value per field.

    Raises:
        InvalidRequestError: Another content type, or a body over 16 KiB.
    """
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise InvalidRequestError("the console accepts URL-encoded forms only")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise InvalidRequestError("the form is too large")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError(f"malformed form: {exc}") from exc
    return {key: values[0] for key, values in parsed.items()}


def _same_origin(request: Request) -> bool:
    """A browser's Origin, when it sends one, must be this server (behind a proxy: its public URL)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    ours = {f"{request.url.scheme}://{request.url.netloc}"}
    public = _ctx(request).settings.public_base_url
    if public:
        parts = urlsplit(public)
        ours.add(f"{parts.scheme}://{parts.netloc}")
    return origin in ours


async def _action(
    request: Request, scope: Scope, work: Callable[[ServerContext, Operator, dict[str, str]], Response]
) -> Response:
    """Run a state-changing request: signed in, same origin, the CSRF token, then ``scope``, then ``work``
    (on a worker thread: it opens its own transaction). Each refusal is an error page, never an action."""
    operator = await run_in_threadpool(_signed_in, request)
    if operator is None:
        return _error_page(None, 401, "not signed in (or the session ended): sign in again")
    if not _same_origin(request):
        return _error_page(operator, 403, "cross-origin request refused")
    try:
        form = await _form(request)
        check_csrf(operator.csrf, form.get("csrf"))
    except (CsrfError, InvalidRequestError) as exc:
        return _error_page(operator, _status_of(exc), str(exc))
    if not operator.can(scope):
        return _error_page(operator, 403, f"this token lacks the {scope.value!r} scope")
    try:
        return await run_in_threadpool(work, _ctx(request), operator, form)
    except ServerError as exc:
        return _error_page(operator, _status_of(exc), str(exc))


# --- sign-in -------------------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request) -> Response:
    """The sign-in form (a double-submit cookie guards it against login CSRF)."""
    if _signed_in(request) is not None:
        return RedirectResponse("/console/", status_code=303)
    return _login_form(request)


def _login_form(request: Request, status: int = 200, message: str | None = None) -> Response:
    nonce = login_nonce()
    response = _html("login.html", status, operator=None, csrf=nonce, message=message, active="")
    secure = is_secure(request, _ctx(request).settings.public_base_url)
    set_cookie(response, LOGIN_COOKIE, nonce, secure=secure, max_age=LOGIN_TTL_SECONDS)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    """Exchange an operator token for a session cookie; audited as ``console.login``."""
    ctx = _ctx(request)
    try:
        form = await _form(request)
    except InvalidRequestError as exc:
        return _error_page(None, 422, str(exc))
    expected = request.cookies.get(LOGIN_COOKIE)
    if not _same_origin(request) or not expected:
        return _error_page(None, 403, "sign-in refused: open the sign-in page first (cookies must be on)")
    try:
        check_csrf(expected, form.get("csrf"))
    except CsrfError as exc:
        return _error_page(None, 403, str(exc))

    def sign_in() -> tuple[str, Operator]:
        with ctx.transaction() as session:
            session_id, operator = open_session(session, form.get("token", ""))
            session.add(
                AuditEntry(
                    actor=operator.actor, action="console.login", subject=operator.token_id, details={}
                )
            )
            return session_id, operator

    try:
        session_id, _operator = await run_in_threadpool(sign_in)
    except (AuthError, ForbiddenError) as exc:
        return _login_form(request, 401, str(exc))
    response = RedirectResponse("/console/", status_code=303)
    secure = is_secure(request, ctx.settings.public_base_url)
    set_cookie(response, SESSION_COOKIE, session_id, secure=secure, max_age=int(SESSION_TTL.total_seconds()))
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (the row is deleted, the cookie cleared)."""

    def work(ctx: ServerContext, _operator: Operator, _form: dict[str, str]) -> Response:
        with ctx.transaction() as session:
            close_session(session, request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/console", httponly=True, samesite="strict")
        return response

    return await _action(request, Scope.READ, work)


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The vendored stylesheet and script (nothing else is served from the folder)."""
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    body = (HERE / "static" / name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "public, max-age=300"})


# --- read views ----------------------------------------------------------------------------------------


@router.get("/")
def overview_page(request: Request) -> Response:
    """Fleet overview: devices by installed release, profile, state and last report, with charts."""

    def render(ctx: ServerContext, operator: Operator) -> Response:
        with ctx.transaction() as session:
            data = queries.overview(session)
            expiry = queries.expiries(session, ctx.keyring, _lifetimes(ctx))
        charts = [
            ("Installed release", queries.chart_bars(data.by_release)),
            ("Hardware profile", queries.chart_bars(data.by_profile)),
            ("Admission state", queries.chart_bars(data.by_state)),
            ("Last report", queries.chart_bars(data.by_seen)),
        ]
        warnings = [e for e in expiry if e.level != "ok"]
        return _html(
            "overview.html", operator=operator, data=data, charts=charts, warnings=warnings, active="overview"
        )

    return _view(request, Scope.READ, render)


@router.get("/devices")
def devices_page(
    request: Request,
    q: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[str | None, Query(max_length=16)] = None,
    profile: Annotated[str | None, Query(max_length=64)] = None,
    group: Annotated[str | None, Query(max_length=64)] = None,
    release: Annotated[str | None, Query(max_length=64)] = None,
    seen: Annotated[str | None, Query(max_length=8)] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Devices, filtered and searched by id prefix, 50 a page in id order (keyset paging)."""
    filters = queries.DeviceFilter(
        q=(q or "").strip() or None, state=state, profile=profile, group=group, release=release, seen=seen
    )

    def render(ctx: ServerContext, operator: Operator) -> Response:
        with ctx.transaction() as session:
            page = queries.device_page(session, filters, after=after or None)
            choices = queries.filter_choices(session)
        return _html(
            "devices.html",
            operator=operator,
            page=page,
            filters=filters,
            choices=choices,
            states=[s.value for s in AdmissionState],
            seen_windows=queries.SEEN_WINDOWS,
            after=after,
            active="devices",
        )

    return _view(request, Scope.READ, render)


@router.get("/devices/{device_id}")
def device_page(request: Request, device_id: Annotated[str, PathParam(max_length=64)]) -> Response:
    """One device: installed release and its trace, install history, reports, failures and attacks."""

    def render(ctx: ServerContext, operator: Operator) -> Response:
        with ctx.transaction() as session:
            detail = queries.device_detail(session, device_id)
            if detail is None:
                raise NotFoundError(f"no device {device_id!r}")
            return _html("device.html", operator=operator, d=detail, active="devices")

    return _view(request, Scope.READ, render)


@router.get("/releases")
def releases_page(request: Request) -> Response:
    """Releases: model, version, size, deltas per base, provenance; a rollout can start from here."""

    def render(ctx: ServerContext, operator: Operator) -> Response:
        with ctx.transaction() as session:
            rows = queries.releases(session)
            return _html(
                "releases.html",
                operator=operator,
                rows=rows,
                default_phases=", ".join(f"{p:g}" for p in ctx.settings.rollout_phases),
                active="releases",
            )

    return _view(request, Scope.READ, render)


@router.get("/rollouts")
def rollouts_page(request: Request) -> Response:
    """Rollouts, newest first, with state, phase and counts."""

    def render(ctx: ServerContext, operator: Operator) -> Response:
        with ctx.transaction() as session:
            return _html(
                "rollouts.html", operator=operator, rows=queries.rollouts(session), active="rollouts"
            )

    return _view(request, Scope.READ, render)


def _allowed_actions(state: str) -> list[tuple[str, str]]:
    current = RolloutState(state)
    return [(e.value, ACTION_LABELS[e]) for e in RolloutEvent if (current, e) in TRANSITIONS]


def _rollout_values(ctx: ServerContext, rollout_id: str) -> dict[str, Any]:
    with ctx.transaction() as session:
        report = rollout_report(session, rollout_id)
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        selector = dict(rollout.selector)
    cohort_done = report.succeeded + report.failed
    return {
        "r": report,
        "selector": selector,
        "actions": _allowed_actions(report.state),
        "threshold_pct": report.failure_threshold * 100,
        "rate_pct": report.failure_rate * 100,
        "over": cohort_done > 0 and report.failure_rate > report.failure_threshold,
        "phase_count": len(report.phases),
        "phase_pct": report.phases[report.phase_index] if report.phases else 0,
        "finite": math.isfinite,
    }


@router.get("/rollouts/{rollout_id}")
def rollout_page(request: Request, rollout_id: Annotated[str, PathParam(max_length=32)]) -> Response:
    """One rollout: live progress (polled fragment), failure rate against threshold, timeline, actions."""

    def render(ctx: ServerContext, operator: Operator) -> Response:
        values = _rollout_values(ctx, rollout_id)
        return _html("rollout.html", operator=operator, active="rollouts", **values)

    return _view(request, Scope.READ, render)


@router.get("/rollouts/{rollout_id}/live")
def rollout_live(request: Request, rollout_id: Annotated[str, PathParam(max_length=32)]) -> Response:
    """The live part of the rollout page (``console.js`` polls it and swaps it in)."""

    def render(ctx: ServerContext, operator: Operator) -> Response:
        values = _rollout_values(ctx, rollout_id)
        return _html("_rollout_live.html", operator=operator, **values)

    return _view(request, Scope.READ, render, fragment=True)


@router.get("/audit")
def audit_page(
    request: Request,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=32)] = None,
    until: Annotated[str | None, Query(max_length=32)] = None,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """The audit log (admin, as on the API), filtered by actor and action prefix and a time window."""

    def render(ctx: ServerContext, operator: Operator) -> Response:
        try:
            filters = queries.AuditFilter(
                actor=(actor or "").strip() or None,
                action=(action or "").strip() or None,
                since=_parse_time(since),
                until=_parse_time(until),
            )
        except ValueError as exc:
            raise InvalidRequestError(f"bad time: {exc}") from exc
        with ctx.transaction() as session:
            rows, next_before = queries.audit_entries(session, filters, before=before)
            return _html(
                "audit.html",
                operator=operator,
                rows=rows,
                filters=filters,
                next_before=next_before,
                active="audit",
            )

    return _view(request, Scope.ADMIN, render)


def _parse_time(value: str | None) -> datetime | None:
    if not value or not value.strip():
        return None
    moment = datetime.fromisoformat(value.strip())
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _lifetimes(ctx: ServerContext) -> dict[str, int]:
    s = ctx.settings
    return {
        "root": s.root_expiry,
        "targets": s.targets_expiry,
        "snapshot": s.snapshot_expiry,
        "timestamp": s.timestamp_expiry,
    }


@router.get("/keys")
def keys_page(request: Request) -> Response:
    """Signing keys and metadata expiry: days left per role, warnings, online/offline keys."""

    def render(ctx: ServerContext, operator: Operator) -> Response:
        with ctx.transaction() as session:
            rows = queries.expiries(session, ctx.keyring, _lifetimes(ctx))
        return _html(
            "keys.html",
            operator=operator,
            rows=rows,
            generated=ctx.keyring.generated,
            director=ctx.keyring.roles.get("director"),
            assignment_hours=ctx.settings.assignment_expiry / 3600,
            active="keys",
        )

    return _view(request, Scope.READ, render)


# --- actions -------------------------------------------------------------------------------------------


def _reason(form: dict[str, str]) -> str:
    reason = " ".join(form.get("reason", "").split())
    if not reason:
        raise InvalidRequestError("give a reason: it goes into the audit log")
    if len(reason) > 500:
        raise InvalidRequestError("the reason is longer than 500 characters")
    return reason


def _number_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.replace(",", " ").split()]
    except ValueError as exc:
        raise InvalidRequestError(f"phases must be percentages like '1, 10, 50, 100': {exc}") from exc


@router.post("/rollouts")
async def start_rollout(request: Request) -> Response:
    """Start a rollout of a release (rollout scope): the API's request model validates the form, and the
    API's ``rollout_from_request`` starts it with the same defaults."""

    def work(ctx: ServerContext, operator: Operator, form: dict[str, str]) -> Response:
        raw: dict[str, Any] = {
            "release_id": form.get("release_id", ""),
            "group": form.get("group", "").strip() or None,
            "tags": [t for t in form.get("tags", "").replace(",", " ").split() if t],
        }
        if form.get("phases", "").strip():
            raw["phases"] = [{"percent": p} for p in _number_list(form["phases"])]
        for key in ("failure_threshold", "min_reports_for_abort"):
            if form.get(key, "").strip():
                raw[key] = form[key].strip()
        try:
            body = RolloutCreate.model_validate(raw)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise InvalidRequestError(details) from exc
        with ctx.transaction() as session:
            rollout = rollout_from_request(session, ctx.settings, body, actor=operator.actor)
            rollout_id = rollout.id
        return RedirectResponse(f"/console/rollouts/{rollout_id}", status_code=303)

    return await _action(request, Scope.ROLLOUT, work)


@router.post("/rollouts/{rollout_id}/{action}")
async def act_on_rollout(
    request: Request, rollout_id: Annotated[str, PathParam(max_length=32)], action: str
) -> Response:
    """Pause, resume, advance, abort or roll back a rollout (rollout scope), with a reason for the audit
    log; the API's ``control_rollout`` does it."""

    def work(ctx: ServerContext, operator: Operator, form: dict[str, str]) -> Response:
        try:
            event = RolloutEvent(action)
        except ValueError as exc:
            raise NotFoundError(f"no rollout action {action!r}") from exc
        reason = _reason(form)
        with ctx.transaction() as session:
            control_rollout(session, rollout_id, event, actor=operator.actor, reason=reason)
        return RedirectResponse(f"/console/rollouts/{rollout_id}", status_code=303)

    return await _action(request, Scope.ROLLOUT, work)
