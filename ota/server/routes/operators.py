"""Operator routes: tokens, releases, rollouts, device admission and the audit log; each needs a scope.

Every state-changing operator action writes an audit entry in the same transaction.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from ota.core.manifest import AdmissionState
from ota.core.targets import NAME_PATTERN
from ota.server.admission import revoke_device, revoke_token, set_admission
from ota.server.auth import create_operator_token, create_provisioning_token
from ota.server.db import read_counter
from ota.server.deps import (
    AdminOperator,
    ContextDep,
    ReadOperator,
    ReleaseOperator,
    RolloutOperator,
)
from ota.server.errors import InvalidRequestError, NotFoundError
from ota.server.housekeeping import upload_dir
from ota.server.models import (
    AuditEntry,
    Delta,
    Device,
    OperatorToken,
    ProvisioningToken,
    Release,
    Rollout,
    StatusReportRow,
)
from ota.server.releases import (
    SHA256_PATTERN,
    fetch_staged_selftest,
    publish_release,
    stage_selftest,
)
from ota.server.rollout_machine import RolloutEvent
from ota.server.rollouts import control_rollout, counters, create_rollout
from ota.server.routes.devices import ERRORS
from ota.server.schemas import (
    AuditPublic,
    DeltaPublic,
    DeviceDetailPublic,
    DevicePublic,
    DeviceReportPublic,
    OperatorTokenCreate,
    OperatorTokenInfo,
    ProvisioningTokenCreate,
    ProvisioningTokenInfo,
    PublishPublic,
    ReleasePublic,
    RevokeRequest,
    RolloutCreate,
    RolloutPublic,
    SelftestUploaded,
    TokenCreated,
    TokenInfo,
)
from ota.server.settings import ServerSettings
from ota.server.status_cli import rollout_report

router = APIRouter(prefix="/v1", tags=["operators"], responses=ERRORS)
NamePart = Annotated[str, Query(pattern=NAME_PATTERN.pattern, max_length=64)]


def _audit(session: Any, actor: str, action: str, subject: str, **details: Any) -> None:
    session.add(AuditEntry(actor=actor, action=action, subject=subject, details=details))


@router.post("/tokens", status_code=201)
def create_token(body: OperatorTokenCreate, operator: AdminOperator, ctx: ContextDep) -> TokenCreated:
    """Create an operator API token (admin)."""
    with ctx.transaction() as session:
        row, value = create_operator_token(session, name=body.name, scopes=body.scopes)
        _audit(session, f"token:{operator.id}", "token.create", row.id, scopes=row.scopes)
        return TokenCreated(id=row.id, name=row.name, token=value)


@router.get("/tokens")
def list_tokens(operator: AdminOperator, ctx: ContextDep) -> list[OperatorTokenInfo]:
    """List operator tokens, revoked ones included (admin)."""
    with ctx.transaction() as session:
        rows = session.scalars(select(OperatorToken).order_by(OperatorToken.created_at))
        return [OperatorTokenInfo.model_validate(r) for r in rows]


@router.get("/provisioning-tokens")
def list_provisioning_tokens(operator: AdminOperator, ctx: ContextDep) -> list[ProvisioningTokenInfo]:
    """List provisioning tokens, revoked ones included (admin)."""
    with ctx.transaction() as session:
        rows = session.scalars(select(ProvisioningToken).order_by(ProvisioningToken.created_at))
        return [ProvisioningTokenInfo.model_validate(r) for r in rows]


@router.post("/tokens/{token_id}/revoke")
def revoke_operator_or_provisioning_token(
    token_id: Annotated[str, PathParam(max_length=32)],
    operator: AdminOperator,
    ctx: ContextDep,
    body: RevokeRequest | None = None,
) -> TokenInfo:
    """Revoke an operator or provisioning token by id, at once and for good; audited (admin).

    Raises:
        NotFoundError: No token has that id.
    """
    with ctx.transaction() as session:
        row = revoke_token(
            session, token_id=token_id, actor=f"token:{operator.id}", reason=body.reason if body else None
        )
        return TokenInfo.model_validate(row)


@router.post("/provisioning-tokens", status_code=201)
def create_provisioning(
    body: ProvisioningTokenCreate, operator: AdminOperator, ctx: ContextDep
) -> TokenCreated:
    """Create a device provisioning token (admin)."""
    with ctx.transaction() as session:
        row, value = create_provisioning_token(
            session, name=body.name, auto_accept=body.auto_accept, group=body.group
        )
        _audit(session, f"token:{operator.id}", "provisioning.create", row.id, auto_accept=row.auto_accept)
        return TokenCreated(id=row.id, name=row.name, token=value)


async def _receive(request: Request, path: Path, limit: int, what: str) -> None:
    """Stream the request body to ``path``, refusing more than ``limit`` bytes or an empty body."""
    size = 0
    with path.open("wb") as handle:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InvalidRequestError(f"{what} is larger than {limit} bytes")
            handle.write(chunk)
    if size == 0:
        raise InvalidRequestError(f"the request body ({what}) is empty")


_BINARY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.put("/releases/selftest", status_code=201, openapi_extra=_BINARY_BODY)
async def upload_selftest(request: Request, operator: ReleaseOperator, ctx: ContextDep) -> SelftestUploaded:
    """Stage a release's self-test vectors (the ``.npz`` body); idempotent, content-addressed (release scope).

    Publish the model with ``selftest_sha256`` set to the answer's ``sha256`` to attach them.

    Raises:
        InvalidRequestError: Empty, oversized or not an ``.npz`` file.
    """
    with upload_dir(ctx.settings.temp_dir) as tmp:
        path = tmp / "selftest.npz"
        # Streamed to disk chunk by chunk, never held whole; EDGEFLEET_MAX_SELFTEST_BYTES bounds it.
        await _receive(request, path, ctx.settings.max_selftest_bytes, "self-test vectors")
        sha256, length = await run_in_threadpool(stage_selftest, ctx.blobs, path)
    # No audit entry here: staging changes no signed state; the publish that attaches them is audited.
    return SelftestUploaded(sha256=sha256, length=length)


@router.put(
    "/releases",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def publish(
    request: Request,
    operator: ReleaseOperator,
    ctx: ContextDep,
    model: NamePart,
    version: NamePart,
    profile: NamePart,
    source_uri: Annotated[str | None, Query(max_length=1024)] = None,
    selftest_sha256: Annotated[str | None, Query(pattern=SHA256_PATTERN.pattern)] = None,
    mlflow_run_id: Annotated[str | None, Query(max_length=128)] = None,
    data_fingerprint: Annotated[str | None, Query(max_length=128)] = None,
    artifact_format: Annotated[
        Literal["onnx", "raw"], Query(description="raw: any bytes (audited)")
    ] = "onnx",
) -> PublishPublic:
    """Publish the request body (the artifact bytes) as a release; idempotent (release scope).

    With ``selftest_sha256`` (from ``PUT /v1/releases/selftest``) the staged vectors become the release's
    self-test target, signed in the same targets version as the model.

    Raises:
        InvalidRequestError: Empty or oversized artifact, or unknown staged vectors.
        ConflictError: model/version/profile taken by another artifact or other vectors.
    """
    with upload_dir(ctx.settings.temp_dir) as tmp:
        path = tmp / "artifact.onnx"
        await _receive(request, path, ctx.settings.max_artifact_bytes, "the artifact")
        vectors: Path | None = None
        if selftest_sha256 is not None:
            vectors = await run_in_threadpool(
                fetch_staged_selftest, ctx.blobs, selftest_sha256, tmp / "selftest.npz"
            )
        result = await run_in_threadpool(
            publish_release,
            factory=ctx.sessions,
            blobs=ctx.blobs,
            repository=ctx.repository,
            artifact=path,
            model=model,
            version=version,
            profile=profile,
            source_uri=source_uri,
            delta_base_count=ctx.settings.delta_base_count,
            actor=f"token:{operator.id}",
            selftest=vectors,
            mlflow_run_id=mlflow_run_id,
            data_fingerprint=data_fingerprint,
            temp_dir=ctx.settings.temp_dir,
            artifact_format=artifact_format,
        )
    if result.created:
        with ctx.sessions() as session:
            ctx.cache.observe(read_counter(session))
    return PublishPublic(
        release=ReleasePublic.model_validate(result.release),
        created=result.created,
        deltas=[DeltaPublic.model_validate(d) for d in result.deltas],
    )


@router.get("/releases")
def list_releases(operator: ReadOperator, ctx: ContextDep) -> list[ReleasePublic]:
    """List releases, newest first (read)."""
    with ctx.transaction() as session:
        rows = session.scalars(select(Release).order_by(Release.created_at.desc()).limit(1000))
        return [ReleasePublic.model_validate(r) for r in rows]


@router.get("/releases/{release_id}")
def get_release(release_id: Annotated[str, ...], operator: ReadOperator, ctx: ContextDep) -> PublishPublic:
    """Show one release with its deltas (read).

    Raises:
        NotFoundError: Unknown release.
    """
    with ctx.transaction() as session:
        release = session.get(Release, release_id)
        if release is None:
            raise NotFoundError(f"no release {release_id!r}")
        deltas = session.scalars(select(Delta).where(Delta.release_id == release_id))
        return PublishPublic(
            release=ReleasePublic.model_validate(release),
            created=False,
            deltas=[DeltaPublic.model_validate(d) for d in deltas],
        )


def _rollout_public(session: Any, rollout: Rollout) -> RolloutPublic:
    counts = counters(session, rollout.id)
    return RolloutPublic(
        id=rollout.id,
        release_id=rollout.release_id,
        previous_release_id=rollout.previous_release_id,
        selector=rollout.selector,
        phases=rollout.phases,
        phase_index=rollout.phase_index,
        state=rollout.state,
        reason=rollout.reason,
        succeeded=counts.succeeded,
        failed=counts.failed,
        in_progress=counts.in_progress,
    )


@router.post("/rollouts", status_code=201)
def start_rollout(body: RolloutCreate, operator: RolloutOperator, ctx: ContextDep) -> RolloutPublic:
    """Start a rollout (rollout scope).

    Raises:
        NotFoundError: Unknown release.
        ConflictError: An active rollout holds the selector.
        InvalidRequestError: Bad phases.
    """
    with ctx.transaction() as session:
        rollout = rollout_from_request(session, ctx.settings, body, actor=f"token:{operator.id}")
        return _rollout_public(session, rollout)


def rollout_from_request(
    session: Any, settings: ServerSettings, body: RolloutCreate, *, actor: str
) -> Rollout:
    """Start the rollout a request describes, the server's default phases filling what it leaves out (the
    API and the web console both start rollouts through here).

    Raises:
        NotFoundError: Unknown release.
        ConflictError: An active rollout holds the selector.
        InvalidRequestError: Bad phases.
    """
    return create_rollout(
        session,
        release_id=body.release_id,
        group=body.group,
        tags=tuple(body.tags),
        phases=[settings.phase(**p.model_dump()) for p in body.phases]
        if body.phases
        else settings.default_phases(),
        failure_threshold=body.failure_threshold,
        min_reports_for_abort=body.min_reports_for_abort,
        abort_action=body.abort_action,
        progress_timeout=body.progress_timeout,
        actor=actor,
    )


@router.get("/rollouts")
def list_rollouts(operator: ReadOperator, ctx: ContextDep) -> list[RolloutPublic]:
    """List rollouts, newest first (read)."""
    with ctx.transaction() as session:
        rows = session.scalars(select(Rollout).order_by(Rollout.created_at.desc()).limit(1000))
        return [_rollout_public(session, r) for r in rows]


@router.get("/rollouts/{rollout_id}")
def get_rollout(rollout_id: str, operator: ReadOperator, ctx: ContextDep) -> RolloutPublic:
    """Show one rollout and its counters (read).

    Raises:
        NotFoundError: Unknown rollout.
    """
    with ctx.transaction() as session:
        rollout = session.get(Rollout, rollout_id)
        if rollout is None:
            raise NotFoundError(f"no rollout {rollout_id!r}")
        return _rollout_public(session, rollout)


@router.get("/rollouts/{rollout_id}/report")
def get_rollout_report(rollout_id: str, operator: ReadOperator, ctx: ContextDep) -> dict[str, Any]:
    """What ``edgefleet rollout status`` shows: phases, counts per status, failure rate vs threshold, bytes
    served as delta vs full and what that saved (``ota.core.savings``), and the timeline (read).

    Raises:
        NotFoundError: Unknown rollout.
    """
    with ctx.transaction() as session:
        return asdict(rollout_report(session, rollout_id))


@router.post("/rollouts/{rollout_id}/{action}")
def act_on_rollout(
    rollout_id: str, action: RolloutEvent, operator: RolloutOperator, ctx: ContextDep
) -> RolloutPublic:
    """Pause, resume, abort, roll back or advance a rollout by hand (rollout scope).

    Raises:
        NotFoundError: Unknown rollout.
        RolloutStateError: The action is not allowed in the rollout's state.
    """
    with ctx.transaction() as session:
        rollout = control_rollout(session, rollout_id, action, actor=f"token:{operator.id}")
        return _rollout_public(session, rollout)


@router.get("/devices")
def list_devices(
    operator: ReadOperator,
    ctx: ContextDep,
    state: AdmissionState | None = None,
    profile: Annotated[str | None, Query(max_length=64)] = None,
    group: Annotated[str | None, Query(max_length=64)] = None,
    sha256: Annotated[str | None, Query(pattern=SHA256_PATTERN.pattern)] = None,
    version: Annotated[str | None, Query(max_length=64, description="installed release version")] = None,
    seen_before: Annotated[datetime | None, Query(description="last report before (ISO-8601)")] = None,
    seen_after: Annotated[datetime | None, Query(description="last report after (ISO-8601)")] = None,
    after: Annotated[str | None, Query(max_length=64, description="last id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[DevicePublic]:
    """List devices by id, filtered, one page at a time (read).

    Every filter is an indexed column (state, profile, group, installed sha256, last seen); ``version``
    matches the devices that run any release of that version. Page with ``after`` = the last id of the
    previous page (keyset paging: stable while devices enrol).
    """
    with ctx.transaction() as session:
        query = select(Device).order_by(Device.id).limit(limit)
        if state is not None:
            query = query.where(Device.state == state.value)
        if profile is not None:
            query = query.where(Device.hardware_profile == profile)
        if group is not None:
            query = query.where(Device.group == group)
        if sha256 is not None:
            query = query.where(Device.current_sha256 == sha256)
        if version is not None:
            query = query.where(
                Device.current_sha256.in_(select(Release.sha256).where(Release.version == version))
            )
        if seen_before is not None:
            query = query.where(Device.updated_at < seen_before)
        if seen_after is not None:
            query = query.where(Device.updated_at > seen_after)
        if after is not None:
            query = query.where(Device.id > after)
        return [DevicePublic.model_validate(d) for d in session.scalars(query)]


@router.get("/devices/{device_id}")
def get_device(
    device_id: Annotated[str, PathParam(max_length=64)],
    operator: ReadOperator,
    ctx: ContextDep,
    reports: Annotated[int, Query(ge=0, le=1000)] = 20,
) -> DeviceDetailPublic:
    """Show one device: state, profile, group, tags, the release it runs and its newest reports (read).

    Raises:
        NotFoundError: Unknown device.
    """
    with ctx.transaction() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id!r}")
        installed = installed_release(session, device.current_sha256)
        rows = session.scalars(
            select(StatusReportRow)
            .where(StatusReportRow.device_id == device_id)
            .order_by(StatusReportRow.id.desc())
            .limit(reports)
        )
        return DeviceDetailPublic(
            device=DevicePublic.model_validate(device),
            provisioning_token_id=device.provisioning_token_id,
            installed_release=None if installed is None else ReleasePublic.model_validate(installed),
            reports=[
                DeviceReportPublic(
                    counter=r.counter,
                    status=r.status,
                    received_at=r.received_at,
                    release_id=r.release_id,
                    rollout_id=r.rollout_id,
                    message=report_message(r.body),
                )
                for r in rows
            ],
        )


def installed_release(session: Any, sha256: str | None) -> Release | None:
    """The newest release whose artifact is ``sha256`` (what a device reporting it runs), or None."""
    if not sha256:
        return None
    query = select(Release).where(Release.sha256 == sha256).order_by(Release.created_at.desc()).limit(1)
    found: Release | None = session.scalars(query).first()
    return found


def report_message(body: dict[str, Any] | None) -> str | None:
    """The human reason a status report gives (``details.error``, ``reason`` or ``message``), shortened."""
    details = (body or {}).get("details") or {}
    for key in ("error", "reason", "message"):
        if isinstance(details.get(key), str):
            return str(details[key])[:500]
    return None


@router.post("/devices/{device_id}/admission/{decision}")
def admit_device(
    device_id: str,
    decision: AdmissionState,
    operator: AdminOperator,
    ctx: ContextDep,
    body: RevokeRequest | None = None,
) -> DevicePublic:
    """Accept or reject a device (admin); ``revoked`` revokes it for good.

    Raises:
        NotFoundError: Unknown device.
        InvalidRequestError: ``pending`` is not a decision.
        ConflictError: The device was revoked.
    """
    actor, reason = f"token:{operator.id}", body.reason if body else None
    with ctx.transaction() as session:
        if decision is AdmissionState.REVOKED:
            device = revoke_device(session, device_id=device_id, actor=actor, reason=reason)
        else:
            device = set_admission(
                session, device_id=device_id, decision=decision, actor=actor, reason=reason
            )
        public = DevicePublic.model_validate(device)
        generation = read_counter(session)
    # This process stops serving the device's cached assignment now; the others at their next refresh.
    ctx.cache.observe(generation)
    return public


@router.post("/devices/{device_id}/revoke")
def revoke(
    device_id: str, operator: AdminOperator, ctx: ContextDep, body: RevokeRequest | None = None
) -> DevicePublic:
    """Revoke a device: refused on every endpoint from its next request on; audited (admin).

    Raises:
        NotFoundError: Unknown device.
    """
    return admit_device(device_id, AdmissionState.REVOKED, operator, ctx, body)


@router.get("/audit")
def audit_log(
    operator: AdminOperator, ctx: ContextDep, limit: Annotated[int, Query(ge=1, le=10000)] = 100
) -> list[AuditPublic]:
    """Return the newest audit entries (admin)."""
    with ctx.transaction() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
        return [AuditPublic.model_validate(r) for r in rows]
