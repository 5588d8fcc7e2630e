"""Typed answers of the OTA server's operator API, parsed in one place (:func:`parse`).

Plain frozen dataclasses mirror the server's ``*Public`` schemas without importing them (the client imports
no server code). :func:`parse` checks every field's type and raises :class:`ResponseError` on a missing or
wrong-typed field; fields the client does not know are ignored, so a newer server still works. Times stay
ISO-8601 strings as the server writes them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ota.client.errors import ResponseError

# The rollout report document is owned by ota.core (the server builds it); re-exported for the client's users.
from ota.core.rollout_report import RolloutReport as RolloutReport
from ota.core.rollout_report import TimelineEvent as TimelineEvent

T = TypeVar("T")


@dataclass(frozen=True)
class Release:
    """A signed release of one model artifact for one hardware profile."""

    id: str
    model: str
    version: str
    profile: str
    sha256: str
    length: int
    target_name: str
    created_at: str
    source_uri: str | None = None
    mlflow_run_id: str | None = None
    data_fingerprint: str | None = None
    selftest_target: str | None = None
    selftest_sha256: str | None = None


@dataclass(frozen=True)
class Delta:
    """A delta patch from an earlier release to a release."""

    base_release_id: str
    base_sha256: str
    target_name: str
    sha256: str
    length: int


@dataclass(frozen=True)
class Publication:
    """The answer to a publish (or to ``release show``): the release and its deltas."""

    release: Release
    created: bool
    deltas: list[Delta]


@dataclass(frozen=True)
class SelftestStaged:
    """Staged self-test vectors: publish with ``selftest_sha256=sha256`` to attach them."""

    sha256: str
    length: int


@dataclass(frozen=True)
class Rollout:
    """A rollout and its outcome counters."""

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


@dataclass(frozen=True)
class Device:
    """A device as operators see it."""

    id: str
    hardware_profile: str
    tags: list[str]
    group: str | None
    state: str
    current_sha256: str | None
    last_report_counter: int
    last_seen: str | None = None
    created_at: str | None = None


@dataclass(frozen=True)
class DeviceReport:
    """One status report a device sent."""

    counter: int
    status: str
    received_at: str
    release_id: str | None = None
    rollout_id: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class DeviceDetail:
    """``GET /v1/devices/{id}``: the device, the release it runs (when known) and its recent reports."""

    device: Device
    provisioning_token_id: str | None
    installed_release: Release | None
    reports: list[DeviceReport]


@dataclass(frozen=True)
class TokenCreated:
    """A new token; the clear value is shown once."""

    id: str
    name: str
    token: str


@dataclass(frozen=True)
class TokenInfo:
    """An operator or provisioning token (never its secret)."""

    id: str
    name: str
    created_at: str
    revoked_at: str | None


@dataclass(frozen=True)
class OperatorToken(TokenInfo):
    """An operator token and its scopes."""

    scopes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProvisioningToken(TokenInfo):
    """A device provisioning token and its admission policy."""

    auto_accept: bool = False
    group: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One audit-log entry."""

    id: int
    at: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]


def _check(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` (recursively); return it parsed."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _check(value, inner, where)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return parse(hint, value, where=where)
    if origin is list:
        if not isinstance(value, list):
            raise ResponseError(f"{where} should be a list, not {type(value).__name__}")
        (inner,) = typing.get_args(hint)
        return [_check(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ResponseError(f"{where} should be an object, not {type(value).__name__}")
        _, inner = typing.get_args(hint)
        return {str(k): _check(v, inner, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ResponseError(f"{where} should be an integer, not a boolean")
    if not isinstance(value, hint):
        raise ResponseError(f"{where} should be {hint.__name__}, not {type(value).__name__}")
    return value


def parse(cls: type[T], document: Any, *, where: str = "answer") -> T:
    """Build ``cls`` from a JSON document, checking every field's type.

    Args:
        cls: A dataclass of this module.
        document: The decoded JSON.
        where: Where the document sits in the answer (for messages).

    Returns:
        The parsed answer.

    Raises:
        ResponseError: Not an object, a required field missing, or a field of the wrong type.
    """
    if not isinstance(document, dict):
        raise ResponseError(f"{where} should be an object, not {type(document).__name__}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        if spec.name not in document:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ResponseError(f"{where} lacks the field {spec.name!r}")
            continue
        values[spec.name] = _check(document[spec.name], hints[spec.name], f"{where}.{spec.name}")
    return cls(**values)


def parse_list(cls: type[T], document: Any, *, where: str = "answer") -> list[T]:
    """Build a list of ``cls`` from a JSON array.

    Raises:
        ResponseError: Not an array, or an item :func:`parse` refuses.
    """
    if not isinstance(document, list):
        raise ResponseError(f"{where} should be a list, not {type(document).__name__}")
    return [parse(cls, item, where=f"{where}[{i}]") for i, item in enumerate(document)]


def to_json(answer: Any) -> Any:
    """A model (or a list of them) as JSON-able data, for ``--json``."""
    if isinstance(answer, list):
        return [to_json(a) for a in answer]
    return dataclasses.asdict(answer)
