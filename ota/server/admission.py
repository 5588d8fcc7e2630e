"""Admission and revocation: accept, reject or revoke devices, and revoke operator and provisioning tokens.

One service layer for the API routes and the CLI, so both take the same decisions and write the same audit
entries, in the caller's transaction. Every change that affects what devices may do bumps the shared
generation counter, so every server process drops its cached assignments (the poll hot path) at once and the
next request of a rejected or revoked device reaches a route that refuses it.

Rules:

* ``pending`` → ``accepted`` | ``rejected``; ``accepted`` ⇄ ``rejected`` (an admission decision can change).
* ``revoked`` is terminal for the device's key: refused on every endpoint and never accepted again. A
  device that must come back enrols again under a new id and key.
* A revoked operator or provisioning token stays in the table (``revoked_at`` set) so audits can name it;
  revoking one twice changes nothing and says so.
* Revoking a provisioning token stops new enrolments with it; devices already enrolled keep their state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from ota.core.manifest import AdmissionState
from ota.server.assignments import forget_device
from ota.server.db import bump_counter
from ota.server.errors import ConflictError, InvalidRequestError, NotFoundError
from ota.server.models import AuditEntry, Device, OperatorToken, ProvisioningToken

#: Decisions an operator can take with ``set_admission`` (revocation has its own function).
DECISIONS = frozenset({AdmissionState.ACCEPTED, AdmissionState.REJECTED})


def _audit(session: Session, actor: str, action: str, subject: str, **details: Any) -> None:
    session.add(AuditEntry(actor=actor, action=action, subject=subject, details=details))


def _device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    return device


def set_admission(
    session: Session, *, device_id: str, decision: AdmissionState, actor: str, reason: str | None = None
) -> Device:
    """Accept or reject a device.

    Args:
        session: A session inside a transaction.
        device_id: The device.
        decision: ``accepted`` or ``rejected``.
        actor: Who decides (audit).
        reason: Why (audit), optional.

    Returns:
        The device row.

    Raises:
        NotFoundError: Unknown device.
        InvalidRequestError: A decision other than accepted or rejected.
        ConflictError: The device was revoked.
    """
    if decision not in DECISIONS:
        raise InvalidRequestError(f"a decision is 'accepted' or 'rejected', not {decision.value!r}")
    device = _device(session, device_id)
    if device.state == AdmissionState.REVOKED.value:
        raise ConflictError(f"device {device_id} was revoked; it must enrol again under a new id and key")
    previous = device.state
    device.state = decision.value
    device.updated_at = datetime.now(UTC)
    bump_counter(session, scoped=True)  # this device's answers only: its stored ones are deleted
    forget_device(session, device_id)
    _audit(session, actor, f"device.{decision.value}", device_id, previous=previous, reason=reason)
    return device


def revoke_device(session: Session, *, device_id: str, actor: str, reason: str | None = None) -> Device:
    """Revoke a device's credentials for good (refused everywhere from the next request on).

    Raises:
        NotFoundError: Unknown device.
    """
    device = _device(session, device_id)
    if device.state != AdmissionState.REVOKED.value:
        previous = device.state
        device.state = AdmissionState.REVOKED.value
        device.updated_at = datetime.now(UTC)
        bump_counter(session, scoped=True)
        forget_device(session, device_id)
        _audit(session, actor, "device.revoke", device_id, previous=previous, reason=reason)
    return device


def revoke_token(
    session: Session, *, token_id: str, actor: str, reason: str | None = None
) -> OperatorToken | ProvisioningToken:
    """Revoke an operator or provisioning token by id (ids are unique across both kinds).

    Returns:
        The token row, with ``revoked_at`` set (unchanged when it was revoked already).

    Raises:
        NotFoundError: No token has that id.
    """
    row: OperatorToken | ProvisioningToken | None = session.get(OperatorToken, token_id)
    kind = "token"
    if row is None:
        row = session.get(ProvisioningToken, token_id)
        kind = "provisioning"
    if row is None:
        raise NotFoundError(f"no operator or provisioning token {token_id!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        bump_counter(session, scoped=True)  # tokens do not change any device's assignment
        _audit(session, actor, f"{kind}.revoke", token_id, name=row.name, reason=reason)
    return row
