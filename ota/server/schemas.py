"""Pydantic request and response models of the HTTP API (schema families: Create / Public).

They give FastAPI its validation (wrong types → 422 with a clear message) and the OpenAPI schema that
schemathesis exercises. Signed documents are checked again, strictly, by ``ota.core.manifest``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ota.server.rollout_machine import DEFAULT_FAILURE_THRESHOLD, DEFAULT_MIN_REPORTS_FOR_ABORT

LABEL = r"^[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,63}$"
NUL_MESSAGE = "text must not contain NUL (\\u0000) characters"


def _has_nul(value: Any, depth: int = 0) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if depth > 64:  # deeper than any document we accept; the JSON parser already bounded the input
        return False
    if isinstance(value, dict):
        return any(_has_nul(k, depth + 1) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v, depth + 1) for v in value)
    return False


class RequestModel(BaseModel):
    """Base of request bodies: no NUL character in any string, keys included, at any depth (422).

    PostgreSQL cannot store NUL in text or jsonb while SQLite can: refusing it here makes both backends
    accept and refuse the same requests, before any value reaches a query.
    """

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if _has_nul(data):
            raise ValueError(NUL_MESSAGE)
        return data


class ErrorBody(BaseModel):
    """Every error answer: a stable code and a human message."""

    error: str
    message: str


class SignatureModel(RequestModel):
    """One signature of an envelope."""

    model_config = ConfigDict(extra="forbid")
    keyid: str = Field(max_length=128)
    sig: str = Field(max_length=512)


class Envelope(RequestModel):
    """A signed document: ``signed`` plus signatures over its canonical JSON."""

    model_config = ConfigDict(extra="forbid")
    signed: dict[str, Any]
    signatures: list[SignatureModel] = Field(max_length=16)


class ChallengePublic(BaseModel):
    """A nonce to sign."""

    nonce: str
    expires: str


class TokenPublic(BaseModel):
    """A device poll token."""

    token: str
    expires: str


class ReportAccepted(BaseModel):
    """Answer to an accepted status report."""

    accepted: bool
    counter: int


class OperatorTokenCreate(RequestModel):
    """Request to create an operator token."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    scopes: list[Literal["read", "release", "rollout", "admin"]] = Field(min_length=1, max_length=4)


class ProvisioningTokenCreate(RequestModel):
    """Request to create a provisioning token."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    auto_accept: bool = False
    group: str | None = Field(default=None, pattern=LABEL)


class TokenCreated(BaseModel):
    """A new token: the clear value is shown once."""

    id: str
    name: str
    token: str


class ReleasePublic(BaseModel):
    """A release."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    model: str
    version: str
    profile: str
    sha256: str
    length: int
    target_name: str
    source_uri: str | None
    mlflow_run_id: str | None = None
    data_fingerprint: str | None = None
    selftest_target: str | None = None
    selftest_sha256: str | None = None
    created_at: datetime


class SelftestUploaded(BaseModel):
    """A staged self-test vectors upload: pass ``sha256`` as ``selftest_sha256`` when publishing."""

    sha256: str
    length: int


class DeltaPublic(BaseModel):
    """A delta patch of a release."""

    model_config = ConfigDict(from_attributes=True)
    base_release_id: str
    base_sha256: str
    target_name: str
    sha256: str
    length: int


class PublishPublic(BaseModel):
    """Answer to a publish."""

    release: ReleasePublic
    created: bool
    deltas: list[DeltaPublic]


class PhaseModel(RequestModel):
    """A rollout phase; a field left out takes the server's default (``EDGEFLEET_ROLLOUT_*``)."""

    model_config = ConfigDict(extra="forbid")
    percent: float = Field(gt=0, le=100)
    min_soak_seconds: int | None = Field(default=None, ge=0, le=10**8)
    # At least one success: a phase never advances on time alone.
    min_reports: int | None = Field(default=None, ge=1, le=10**9)
    min_success_ratio: float | None = Field(default=None, ge=0, le=1)


class RolloutCreate(RequestModel):
    """Request to start a rollout."""

    model_config = ConfigDict(extra="forbid")
    release_id: str = Field(max_length=64)
    group: str | None = Field(default=None, pattern=LABEL)
    tags: list[str] = Field(default_factory=list, max_length=32)
    phases: list[PhaseModel] | None = Field(default=None, min_length=1, max_length=20)
    failure_threshold: float = Field(default=DEFAULT_FAILURE_THRESHOLD, ge=0, le=1)
    min_reports_for_abort: int = Field(default=DEFAULT_MIN_REPORTS_FOR_ABORT, ge=1, le=10**9)
    abort_action: Literal["abort", "pause"] = "abort"
    progress_timeout: int = Field(default=3600, ge=1, le=10**8)


class RolloutPublic(BaseModel):
    """A rollout with its outcome counters."""

    id: str
    release_id: str
    previous_release_id: str | None
    selector: dict[str, Any]
    phases: list[dict[str, Any]]
    phase_index: int
    state: str
    reason: str | None
    succeeded: int
    failed: int
    in_progress: int


class DevicePublic(BaseModel):
    """A device as operators see it; ``last_seen`` is its last accepted report (or admission change)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    hardware_profile: str
    tags: list[str]
    group: str | None
    state: str
    current_sha256: str | None
    last_report_counter: int
    last_seen: datetime | None = Field(default=None, validation_alias="updated_at")
    created_at: datetime | None = None


class DeviceReportPublic(BaseModel):
    """One status report a device sent, as operators see it."""

    counter: int
    status: str
    received_at: datetime
    release_id: str | None
    rollout_id: str | None
    message: str | None


class DeviceDetailPublic(BaseModel):
    """A device, the release it runs (when a release holds its model) and its newest reports."""

    device: DevicePublic
    provisioning_token_id: str | None
    installed_release: ReleasePublic | None
    reports: list[DeviceReportPublic]


class TokenInfo(BaseModel):
    """An operator or provisioning token as admins see it (never the token itself)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


class OperatorTokenInfo(TokenInfo):
    """An operator token."""

    scopes: list[str]


class ProvisioningTokenInfo(TokenInfo):
    """A provisioning token."""

    auto_accept: bool
    group: str | None


class RevokeRequest(RequestModel):
    """Why a credential is revoked or a device rejected (goes into the audit log)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500)


class AuditPublic(BaseModel):
    """An audit log entry."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]
