"""Device-facing routes: enrolment, challenge → token, assignment (slow path) and signed status reports.

The assignment's hot path (cached answers, 304s) is served by ``ota.server.hotpath`` before a request
reaches FastAPI; this route computes, signs and caches an answer when the cache has none.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from ota.core.manifest import (
    SHA256_PATTERN,
    AdmissionState,
    EnrolmentRequest,
    EnrolmentResponse,
    ReportStatus,
    StatusReport,
    TokenRequest,
    check_report_counter,
    format_time,
    verify_signed_request,
)
from ota.core.signing import key_from_dict, key_to_dict
from ota.server.assignments import serve_assignment
from ota.server.auth import find_provisioning_token
from ota.server.db import FLEET, bump_counter
from ota.server.deps import ContextDep, DeviceIdDep, DevicePath
from ota.server.errors import ConflictError, ForbiddenError, NotFoundError
from ota.server.models import AuditEntry, Device, StatusReportRow
from ota.server.rollouts import record_device_status
from ota.server.schemas import ChallengePublic, Envelope, ErrorBody, ReportAccepted, TokenPublic

router = APIRouter(prefix="/v1", tags=["devices"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422)
}


#: Admission states refused on every device endpoint.
_REFUSED = frozenset({AdmissionState.REJECTED.value, AdmissionState.REVOKED.value})


def _require_accepted(device: Device) -> None:
    if device.state != AdmissionState.ACCEPTED.value:
        raise ForbiddenError(f"device {device.id} is {device.state}; only accepted devices may report")


@router.post("/enrol", responses=ERRORS, status_code=201)
def enrol(envelope: Envelope, ctx: ContextDep, request: Request) -> JSONResponse:
    """Enrol a device: provisioning token + self-signed public key, hardware profile and tags.

    The answer carries the metadata and targets URLs from ``settings.advertised_base_url`` on every call,
    a device already enrolled included, so enrolling again repairs a device that stored a wrong URL.

    Raises:
        DocumentFormatError: The request is malformed.
        SignatureError: Not signed by the key it presents.
        AuthError: Unknown or revoked provisioning token.
        ConflictError: The device id is enrolled with another key.
        ForbiddenError: The device was rejected or revoked, or asks for a group its token does not allow.
    """
    with ctx.transaction() as session:
        raw = envelope.model_dump()
        enrolment = EnrolmentRequest.from_dict(raw["signed"])
        key = key_from_dict(enrolment.public_key)
        verify_signed_request(raw, key, EnrolmentRequest)
        token = find_provisioning_token(session, enrolment.provisioning_token)
        if token.group is not None and enrolment.group not in (None, token.group):
            # A group-scoped token binds its devices to the group (auto-accept must not let one pick another).
            raise ForbiddenError(
                f"this provisioning token enrols devices into group {token.group!r} only, "
                f"not {enrolment.group!r}"
            )
        device = session.get(Device, enrolment.device_id)
        if device is None:
            device = Device(
                id=enrolment.device_id,
                public_key=key_to_dict(key),
                keyid=key.keyid,
                hardware_profile=enrolment.hardware_profile,
                hardware=enrolment.hardware,
                tags=list(enrolment.tags),
                group=enrolment.group or token.group,
                state=(AdmissionState.ACCEPTED if token.auto_accept else AdmissionState.PENDING).value,
                provisioning_token_id=token.id,
            )
            session.add(device)
            if token.auto_accept:
                bump_counter(session, FLEET)  # cached rollout cohort sizes count accepted devices
            session.add(
                AuditEntry(
                    actor=f"device:{enrolment.device_id}",
                    action="device.enrol",
                    subject=enrolment.device_id,
                    details={"state": device.state, "provisioning_token": token.id},
                )
            )
        elif device.keyid != key.keyid:
            raise ConflictError(f"device {enrolment.device_id} is enrolled with another key")
        if device.state in _REFUSED:
            raise ForbiddenError(f"device {enrolment.device_id} was {device.state} by an operator")
        root = ctx.repository.read(session, "root")
        base = ctx.settings.advertised_base_url(request.headers.get("host"), request.url.scheme)
        answer = EnrolmentResponse(
            device_id=device.id,
            state=AdmissionState(device.state),
            tuf_root=json.loads(root or b"{}"),
            director_key=key_to_dict(ctx.keyring.public_keys("director")[0]),
            metadata_url=f"{base}/tuf/metadata/",
            targets_url=f"{base}/tuf/targets/",
            poll_interval=ctx.settings.poll_interval,
        )
        status = 201 if device.state == AdmissionState.ACCEPTED.value else 202
        return JSONResponse(answer.to_dict(), status_code=status)


@router.post("/devices/{device_id}/challenge", responses=ERRORS)
def challenge(device_id: DevicePath, ctx: ContextDep) -> ChallengePublic:
    """Hand out a short-lived nonce for the device to sign.

    Raises:
        NotFoundError: Unknown device.
        ForbiddenError: The device was rejected or revoked.
    """
    with ctx.transaction() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id!r}")
        if device.state in _REFUSED:
            raise ForbiddenError(f"device {device_id} is {device.state}")
        nonce, expires = ctx.tokens.challenge(device_id)
        return ChallengePublic(nonce=nonce, expires=format_time(expires))


@router.post("/devices/{device_id}/token", responses=ERRORS)
def token(device_id: DevicePath, envelope: Envelope, ctx: ContextDep) -> TokenPublic:
    """Exchange a signed challenge for a short-lived poll token.

    Raises:
        NotFoundError: Unknown device.
        SignatureError: Not signed by the device key.
        AuthError: Bad or expired nonce.
        ForbiddenError: The device is not accepted or the request names another device.
    """
    with ctx.transaction() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id!r}")
        request = verify_signed_request(envelope.model_dump(), key_from_dict(device.public_key), TokenRequest)
        if request.device_id != device_id:
            raise ForbiddenError("the signed request names another device")
        ctx.tokens.check_challenge(device_id, request.nonce)
        if device.state != AdmissionState.ACCEPTED.value:
            raise ForbiddenError(f"device {device_id} is {device.state}; an operator must accept it")
        value, expires = ctx.tokens.issue(device_id)
        return TokenPublic(token=value, expires=format_time(expires))


@router.get(
    "/devices/{device_id}/assignment",
    responses={
        **ERRORS,
        200: {"description": "Signed assignment envelope"},
        304: {"description": "Unchanged"},
    },
    response_model=None,
)
def assignment(
    device_id: DeviceIdDep,
    ctx: ContextDep,
    current: Annotated[str | None, Query(pattern=SHA256_PATTERN.pattern)] = None,
    if_none_match: Annotated[str | None, Header(max_length=128)] = None,
) -> Response:
    """Return the director's signed assignment for the calling device (computed and cached on a miss).

    Raises:
        NotFoundError: Unknown device.
        ForbiddenError: The device is not accepted.
    """
    now = time.time()
    answer = ctx.cache.get(device_id, current or "", now)
    if answer is None:
        answer = serve_assignment(ctx, device_id, current, now)
    headers = {"ETag": answer.etag.decode(), "X-Poll-Interval": answer.poll_interval.decode()}
    if if_none_match is not None and if_none_match.encode() == answer.etag:
        ctx.metrics.polls_304 += 1
        return Response(status_code=304, headers=headers)
    ctx.metrics.polls_200 += 1
    return Response(answer.body, media_type="application/json", headers=headers)


@router.post("/devices/{device_id}/reports", responses=ERRORS)
def report(device_id: DeviceIdDep, envelope: Envelope, ctx: ContextDep) -> ReportAccepted:
    """Accept a signed status report whose counter exceeds the last accepted one.

    Raises:
        NotFoundError: Unknown device.
        SignatureError: Not signed by the device key.
        ForbiddenError: The report names another device, or the device is not accepted (rejected, revoked or
            still pending: only accepted devices report, so none of them can move a rollout).
        ReplayError: Its counter is not above the last accepted one (answered 403).
    """
    with ctx.transaction() as session:
        device = session.scalar(select(Device).where(Device.id == device_id).with_for_update())
        if device is None:
            raise NotFoundError(f"no device {device_id!r}")
        status_report = verify_signed_request(
            envelope.model_dump(), key_from_dict(device.public_key), StatusReport
        )
        if status_report.device_id != device_id:
            raise ForbiddenError("the signed report names another device")
        _require_accepted(device)
        check_report_counter(status_report, device.last_report_counter)
        now = datetime.now(UTC)
        device.last_report_counter = status_report.counter
        if status_report.current_sha256:
            device.current_sha256 = status_report.current_sha256
        if status_report.status is ReportStatus.COMMITTED and status_report.target_sha256:
            device.current_sha256 = status_report.target_sha256
        device.updated_at = now
        session.add(
            StatusReportRow(
                device_id=device_id,
                counter=status_report.counter,
                status=status_report.status.value,
                release_id=status_report.release_id,
                rollout_id=status_report.rollout_id,
                body=status_report.to_dict(),
                received_at=now,
            )
        )
        if status_report.rollout_id:
            record_device_status(
                session,
                rollout_id=status_report.rollout_id,
                device_id=device_id,
                release_id=status_report.release_id,
                status=status_report.status.value,
                now=now,
            )
        ctx.metrics.reports[status_report.status.value] += 1
        return ReportAccepted(accepted=True, counter=status_report.counter)
