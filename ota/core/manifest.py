"""Wire formats between the OTA server and the edge agent: enrolment, tokens, assignments, status reports.

Sits in ``ota.core`` with no server dependency; both sides build and check documents only through here, so
the formats cannot drift. Every document is a frozen dataclass with ``to_dict`` / ``from_dict`` (strict:
unknown or missing fields and wrong types raise :class:`DocumentFormatError`). Signed documents travel as
envelopes made by :mod:`ota.core.signing` (``{"signed": ..., "signatures": [...]}``).

Protocol (all JSON; device requests after enrolment carry ``Authorization: Bearer <device token>``)::

    POST /v1/enrol                          body: envelope(EnrolmentRequest) signed by the device key
                                            -> EnrolmentResponse (201 accepted / 202 pending; 403 rejected)
    POST /v1/devices/{id}/challenge         -> Challenge (server nonce, stateless, short-lived)
    POST /v1/devices/{id}/token             body: envelope(TokenRequest) signed by the device key
                                            -> DeviceToken (short-lived MAC token for polls and reports)
    GET  /v1/devices/{id}/assignment?current=<sha256 of installed model>
         If-None-Match: <etag>              -> 200 envelope(Assignment) signed by the director key, with
                                               ETag and X-Poll-Interval headers; or 304 with the same headers
    POST /v1/devices/{id}/reports           body: envelope(StatusReport) signed by the device key
                                            -> 200 {"accepted": true}; a counter not above the last one
                                               accepted is refused with 403 {"error": "replayed_report"}
                                               (the agent may then drop that queued report: it arrived)

Times are RFC 3339 UTC strings with a ``Z`` suffix and whole seconds (TUF's format).
Assignment ``counter`` never decreases for a device: an assignment with a lower counter than one already
accepted is a rollback attack. An equal counter means the same decision re-signed (for example after expiry).
Assignment ``release_seq`` orders the releases of a model (it only grows with each new release). The agent
records the sequence of what it installs; an assignment whose ``release_seq`` is below the installed one is
refused as a rollback attack unless the director set ``rollback: true``, which it does only when an operator
or an automatic abort sends devices back to a previous release.
Status report ``counter`` must strictly increase per device.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self, TypeVar

from securesystemslib.signer import Key, Signer

from ota.core.errors import (
    DocumentFormatError,
    ExpiredDocumentError,
    IdentityMismatchError,
    ReplayError,
)
from ota.core.signing import key_from_dict, sign_document, verify_document

SPEC_VERSION = 1
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# Tags, groups and profiles are short labels; a bound keeps documents (and DB rows) small.
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,63}$")
MAX_TAGS = 32
MAX_DETAILS = 64
MAX_DETAIL_TEXT = 2048

ASSIGNMENT_TYPE = "assignment"
ENROLMENT_TYPE = "enrolment-request"
TOKEN_REQUEST_TYPE = "token-request"  # noqa: S105 - a document type, not a secret
STATUS_REPORT_TYPE = "status-report"


class AdmissionState(StrEnum):
    """A device's admission state at the server."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    #: Credentials withdrawn for good: refused on every endpoint and never accepted again under this key.
    REVOKED = "revoked"


class ReportStatus(StrEnum):
    """What a device reports about the update it is working on."""

    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLED = "installed"
    HEALTH_CHECK_FAILED = "health-check-failed"
    ROLLED_BACK = "rolled-back"
    COMMITTED = "committed"
    # Download or verification failed (details say why; ``attack`` is set for verification failures).
    FAILED = "failed"


#: Statuses that end an update attempt as a failure (they count against a rollout's failure rate).
FAILURE_STATUSES = frozenset(
    {ReportStatus.HEALTH_CHECK_FAILED, ReportStatus.ROLLED_BACK, ReportStatus.FAILED}
)


def utc_now() -> datetime:
    """Return the current time in UTC, truncated to whole seconds."""
    return datetime.now(UTC).replace(microsecond=0)


def format_time(moment: datetime) -> str:
    """Format a datetime as ``YYYY-MM-DDTHH:MM:SSZ`` (naive values are taken as UTC).

    Args:
        moment: The time to format.

    Returns:
        The RFC 3339 string.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any, name: str = "time") -> datetime:
    """Parse a ``YYYY-MM-DDTHH:MM:SSZ`` string into an aware UTC datetime.

    Args:
        text: The value to parse.
        name: Field name for the error message.

    Returns:
        The datetime.

    Raises:
        DocumentFormatError: Not a string in that format.
    """
    if not isinstance(text, str):
        raise DocumentFormatError(f"{name} must be a string like 2030-01-01T00:00:00Z")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise DocumentFormatError(f"{name} must look like 2030-01-01T00:00:00Z, got {text!r}") from exc


# ---- small strict readers: one clear message per bad field -------------------------------------------


def _obj(raw: Any, name: str, allowed: set[str], required: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise DocumentFormatError(f"{name} must be a JSON object")
    unknown = set(raw) - allowed
    if unknown:
        raise DocumentFormatError(f"{name} has unknown field(s): {', '.join(sorted(unknown))}")
    missing = required - set(raw)
    if missing:
        raise DocumentFormatError(f"{name} is missing field(s): {', '.join(sorted(missing))}")
    return raw


def _str(
    raw: Mapping[str, Any], key: str, *, pattern: re.Pattern[str] | None = None, max_len: int = 256
) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise DocumentFormatError(f"{key} must be a non-empty string of at most {max_len} characters")
    if pattern is not None and not pattern.match(value):
        raise DocumentFormatError(f"{key} has an invalid format: {value[:80]!r}")
    return value


def _opt_str(raw: Mapping[str, Any], key: str, *, pattern: re.Pattern[str] | None = None) -> str | None:
    if raw.get(key) is None:
        return None
    return _str(raw, key, pattern=pattern)


def _int(raw: Mapping[str, Any], key: str, *, minimum: int = 0, maximum: int = 2**62) -> int:
    value = raw[key]
    # bool is an int subclass; true/false is never a valid count.
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise DocumentFormatError(f"{key} must be an integer in [{minimum}, {maximum}]")
    return value


def _check_type(raw: Mapping[str, Any], expected: str) -> None:
    if raw.get("_type") != expected:
        raise DocumentFormatError(f"_type must be {expected!r}, got {raw.get('_type')!r}")
    if raw.get("spec_version") != SPEC_VERSION:
        raise DocumentFormatError(f"spec_version must be {SPEC_VERSION}, got {raw.get('spec_version')!r}")


def _labels(raw: Any, name: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_TAGS:
        raise DocumentFormatError(f"{name} must be a list of at most {MAX_TAGS} labels")
    for item in raw:
        if not isinstance(item, str) or not LABEL_PATTERN.match(item):
            raise DocumentFormatError(f"{name} entries must match {LABEL_PATTERN.pattern}")
    return tuple(sorted(set(raw)))


def _details(raw: Any, name: str = "details") -> dict[str, Any]:
    if not isinstance(raw, Mapping) or len(raw) > MAX_DETAILS:
        raise DocumentFormatError(f"{name} must be an object with at most {MAX_DETAILS} entries")
    for key, value in raw.items():
        if not isinstance(key, str) or len(key) > 64:
            raise DocumentFormatError(f"{name} keys must be strings of at most 64 characters")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise DocumentFormatError(f"{name}[{key!r}] must be a string, number, boolean or null")
        if isinstance(value, str) and len(value) > MAX_DETAIL_TEXT:
            raise DocumentFormatError(f"{name}[{key!r}] is longer than {MAX_DETAIL_TEXT} characters")
    return dict(raw)


# ---- enrolment ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentRequest:
    """What a device sends to enrol; signed by the device's own key as proof of possession.

    Attributes:
        device_id: The device's chosen id (``DEVICE_ID_PATTERN``).
        provisioning_token: The fleet provisioning token the operator gave the device.
        public_key: The device's Ed25519 public key dict (see :func:`ota.core.signing.key_to_dict`).
        hardware_profile: The profile label releases target (for example ``x86_64-avx512``).
        hardware: Detected details (architecture, ISA flags, memory, onnxruntime version and providers).
        tags: Free labels rollouts can select on.
        group: Optional device group.
    """

    device_id: str
    provisioning_token: str
    public_key: dict[str, Any]
    hardware_profile: str
    hardware: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able body (the part that is signed)."""
        return {
            "_type": ENROLMENT_TYPE,
            "spec_version": SPEC_VERSION,
            "device_id": self.device_id,
            "provisioning_token": self.provisioning_token,
            "public_key": {k: v for k, v in self.public_key.items() if k != "keyid"},
            "hardware_profile": self.hardware_profile,
            "hardware": dict(self.hardware),
            "tags": list(self.tags),
            "group": self.group,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse and validate a body.

        Args:
            raw: The ``signed`` part of the envelope.

        Returns:
            The request.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid.
        """
        keys = {"device_id", "provisioning_token", "public_key", "hardware_profile"}
        raw = _obj(
            raw, "enrolment request", keys | {"_type", "spec_version", "hardware", "tags", "group"}, keys
        )
        _check_type(raw, ENROLMENT_TYPE)
        key_from_dict(raw["public_key"])
        return cls(
            device_id=_str(raw, "device_id", pattern=DEVICE_ID_PATTERN),
            provisioning_token=_str(raw, "provisioning_token", max_len=512),
            public_key=dict(raw["public_key"]),
            hardware_profile=_str(raw, "hardware_profile", pattern=LABEL_PATTERN),
            hardware=_details(raw.get("hardware", {}), "hardware"),
            tags=_labels(raw.get("tags", []), "tags"),
            group=_opt_str(raw, "group", pattern=LABEL_PATTERN),
        )


@dataclass(frozen=True)
class EnrolmentResponse:
    """The server's answer to an enrolment.

    Attributes:
        device_id: The enrolled id.
        state: Admission state; the device polls only once ``accepted`` (re-enrol to re-check).
        tuf_root: The trusted TUF root metadata (the whole signed JSON) to bootstrap ngclient with.
        director_key: The director's public key dict; assignments are signed with it.
        metadata_url: Base URL of the TUF metadata (ngclient ``metadata_base_url``).
        targets_url: Base URL of the TUF targets (ngclient ``target_base_url``).
        poll_interval: Seconds between polls.
    """

    device_id: str
    state: AdmissionState
    tuf_root: dict[str, Any]
    director_key: dict[str, Any]
    metadata_url: str
    targets_url: str
    poll_interval: int

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able document."""
        return {
            "device_id": self.device_id,
            "state": self.state.value,
            "tuf_root": self.tuf_root,
            "director_key": self.director_key,
            "metadata_url": self.metadata_url,
            "targets_url": self.targets_url,
            "poll_interval": self.poll_interval,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse and validate the document.

        Args:
            raw: Parsed JSON.

        Returns:
            The response.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid.
        """
        keys = {
            "device_id",
            "state",
            "tuf_root",
            "director_key",
            "metadata_url",
            "targets_url",
            "poll_interval",
        }
        raw = _obj(raw, "enrolment response", keys, keys)
        try:
            state = AdmissionState(raw["state"])
        except ValueError as exc:
            raise DocumentFormatError(f"state must be one of {[s.value for s in AdmissionState]}") from exc
        if not isinstance(raw["tuf_root"], dict):
            raise DocumentFormatError("tuf_root must be a JSON object")
        key_from_dict(raw["director_key"])
        return cls(
            device_id=_str(raw, "device_id", pattern=DEVICE_ID_PATTERN),
            state=state,
            tuf_root=dict(raw["tuf_root"]),
            director_key=dict(raw["director_key"]),
            metadata_url=_str(raw, "metadata_url", max_len=2048),
            targets_url=_str(raw, "targets_url", max_len=2048),
            poll_interval=_int(raw, "poll_interval", minimum=1),
        )


# ---- challenge and token -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """A server nonce the device signs (inside a :class:`TokenRequest`) to get a poll token."""

    nonce: str
    expires: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able document."""
        return {"nonce": self.nonce, "expires": self.expires}

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse the document.

        Args:
            raw: Parsed JSON.

        Returns:
            The challenge.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid.
        """
        raw = _obj(raw, "challenge", {"nonce", "expires"}, {"nonce", "expires"})
        parse_time(raw["expires"], "expires")
        return cls(nonce=_str(raw, "nonce", max_len=512), expires=raw["expires"])


@dataclass(frozen=True)
class TokenRequest:
    """The device's signed answer to a challenge."""

    device_id: str
    nonce: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able body (the part that is signed)."""
        return {
            "_type": TOKEN_REQUEST_TYPE,
            "spec_version": SPEC_VERSION,
            "device_id": self.device_id,
            "nonce": self.nonce,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse and validate a body.

        Args:
            raw: The ``signed`` part of the envelope.

        Returns:
            The request.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid.
        """
        keys = {"_type", "spec_version", "device_id", "nonce"}
        raw = _obj(raw, "token request", keys, keys)
        _check_type(raw, TOKEN_REQUEST_TYPE)
        return cls(
            device_id=_str(raw, "device_id", pattern=DEVICE_ID_PATTERN), nonce=_str(raw, "nonce", max_len=512)
        )


@dataclass(frozen=True)
class DeviceToken:
    """A short-lived bearer token for polls and reports (checked with a MAC, not a signature)."""

    token: str
    expires: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able document."""
        return {"token": self.token, "expires": self.expires}

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse the document.

        Args:
            raw: Parsed JSON.

        Returns:
            The token.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid.
        """
        raw = _obj(raw, "device token", {"token", "expires"}, {"token", "expires"})
        parse_time(raw["expires"], "expires")
        return cls(token=_str(raw, "token", max_len=1024), expires=raw["expires"])


# ---- director assignment -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetRef:
    """A TUF target the director points at (the full artifact).

    Attributes:
        name: The TUF target path (what ``Updater.get_targetinfo`` takes).
        length: Size in bytes.
        sha256: Lower-case hex digest.
    """

    name: str
    length: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able document."""
        return {"name": self.name, "length": self.length, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse the document.

        Args:
            raw: Parsed JSON.

        Returns:
            The reference.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid.
        """
        keys = {"name", "length", "sha256"}
        raw = _obj(raw, "target", keys, keys)
        return cls(
            name=_str(raw, "name", max_len=512),
            length=_int(raw, "length"),
            sha256=_str(raw, "sha256", pattern=SHA256_PATTERN),
        )


@dataclass(frozen=True)
class DeltaRef:
    """A delta patch target on offer for the device's current model.

    Attributes:
        name: The patch's TUF target path.
        length: Patch size in bytes.
        sha256: Patch digest.
        base_sha256: The model the patch applies to (the device's current one).
        result_sha256: The model the patch produces (the assignment's target).
    """

    name: str
    length: int
    sha256: str
    base_sha256: str
    result_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able document."""
        return {
            "name": self.name,
            "length": self.length,
            "sha256": self.sha256,
            "base_sha256": self.base_sha256,
            "result_sha256": self.result_sha256,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse the document.

        Args:
            raw: Parsed JSON.

        Returns:
            The reference.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid.
        """
        keys = {"name", "length", "sha256", "base_sha256", "result_sha256"}
        raw = _obj(raw, "delta", keys, keys)
        return cls(
            name=_str(raw, "name", max_len=512),
            length=_int(raw, "length"),
            sha256=_str(raw, "sha256", pattern=SHA256_PATTERN),
            base_sha256=_str(raw, "base_sha256", pattern=SHA256_PATTERN),
            result_sha256=_str(raw, "result_sha256", pattern=SHA256_PATTERN),
        )


@dataclass(frozen=True)
class Assignment:
    """The director's per-device decision: what this device should run now.

    Attributes:
        device_id: The device this is for.
        hardware_profile: The profile the server has on record for it.
        counter: Never decreases for a device (see module docstring).
        expires: When the device must stop trusting this answer.
        poll_interval: Seconds until the next poll (already jittered per device).
        poll_jitter: Extra random seconds in ``[0, poll_jitter]`` the agent adds.
        target: The model to run, or None when the server has nothing for this device.
        delta: A patch from the device's reported current model to ``target``, if one exists.
        release_id: The release ``target`` belongs to.
        rollout_id: The rollout that assigned it (None for a fleet default).
        release_seq: Position of the release among the model's releases (larger is newer), or None.
        rollback: True when an operator or an automatic abort sends the device back to an older release;
            without it an agent refuses any release older than the one it runs.
    """

    device_id: str
    hardware_profile: str
    counter: int
    expires: str
    poll_interval: int
    poll_jitter: int
    target: TargetRef | None
    delta: DeltaRef | None = None
    release_id: str | None = None
    rollout_id: str | None = None
    release_seq: int | None = None
    rollback: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able body (the part that is signed)."""
        body: dict[str, Any] = {
            "_type": ASSIGNMENT_TYPE,
            "spec_version": SPEC_VERSION,
            "device_id": self.device_id,
            "hardware_profile": self.hardware_profile,
            "counter": self.counter,
            "expires": self.expires,
            "poll_interval": self.poll_interval,
            "poll_jitter": self.poll_jitter,
            "target": self.target.to_dict() if self.target else None,
            "delta": self.delta.to_dict() if self.delta else None,
            "release_id": self.release_id,
            "rollout_id": self.rollout_id,
        }
        # Only present when used, so assignments without them keep their earlier bytes (and ETags).
        if self.release_seq is not None:
            body["release_seq"] = self.release_seq
        if self.rollback:
            body["rollback"] = True
        return body

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse and validate a body.

        Args:
            raw: The ``signed`` part of the envelope.

        Returns:
            The assignment.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid.
        """
        required = {"_type", "spec_version", "device_id", "hardware_profile", "counter", "expires"}
        optional = {
            "poll_interval",
            "poll_jitter",
            "target",
            "delta",
            "release_id",
            "rollout_id",
            "release_seq",
            "rollback",
        }
        raw = _obj(raw, "assignment", required | optional, required | {"target"})
        _check_type(raw, ASSIGNMENT_TYPE)
        parse_time(raw["expires"], "expires")
        target = TargetRef.from_dict(raw["target"]) if raw["target"] is not None else None
        delta = DeltaRef.from_dict(raw["delta"]) if raw.get("delta") is not None else None
        if delta is not None and (target is None or delta.result_sha256 != target.sha256):
            raise DocumentFormatError("delta.result_sha256 must equal target.sha256")
        rollback = raw.get("rollback", False)
        if not isinstance(rollback, bool):
            raise DocumentFormatError("assignment field 'rollback' must be true or false")
        return cls(
            device_id=_str(raw, "device_id", pattern=DEVICE_ID_PATTERN),
            hardware_profile=_str(raw, "hardware_profile", pattern=LABEL_PATTERN),
            counter=_int(raw, "counter"),
            expires=raw["expires"],
            poll_interval=_int(raw, "poll_interval", minimum=1) if "poll_interval" in raw else 60,
            poll_jitter=_int(raw, "poll_jitter") if "poll_jitter" in raw else 0,
            target=target,
            delta=delta,
            release_id=_opt_str(raw, "release_id"),
            rollout_id=_opt_str(raw, "rollout_id"),
            release_seq=_int(raw, "release_seq") if raw.get("release_seq") is not None else None,
            rollback=rollback,
        )


def sign_assignment(assignment: Assignment, director: Signer) -> dict[str, Any]:
    """Sign an assignment with the director key.

    Args:
        assignment: The decision.
        director: The director's signer.

    Returns:
        The envelope.

    Raises:
        SignatureError: The signer failed.
    """
    return sign_document(assignment.to_dict(), [director])


def verify_assignment(
    envelope: bytes | str | Mapping[str, Any],
    director_key: Key,
    *,
    device_id: str,
    hardware_profile: str | None = None,
    last_counter: int | None = None,
    installed_release_seq: int | None = None,
    now: datetime | None = None,
) -> Assignment:
    """Check an assignment envelope the way the agent must, and return the assignment.

    Args:
        envelope: The response body.
        director_key: The director public key received at enrolment.
        device_id: This device's id.
        hardware_profile: This device's profile, if it should be checked.
        last_counter: The highest counter accepted before (None on first poll).
        installed_release_seq: The ``release_seq`` of the installed model (None when unknown).
        now: Current time (for tests); defaults to the clock.

    Returns:
        The verified assignment.

    Raises:
        DocumentFormatError: The envelope or the assignment is malformed.
        SignatureError: Not signed by the director key.
        IdentityMismatchError: It is for another device or profile.
        ReplayError: Its counter is below ``last_counter``, or it assigns a release older than the installed
            one without the rollback flag.
        ExpiredDocumentError: It has expired.
    """
    assignment = Assignment.from_dict(verify_document(envelope, [director_key]))
    if assignment.device_id != device_id:
        raise IdentityMismatchError(f"assignment is for device {assignment.device_id!r}, not {device_id!r}")
    if hardware_profile is not None and assignment.hardware_profile != hardware_profile:
        raise IdentityMismatchError(
            f"assignment is for profile {assignment.hardware_profile!r}, not {hardware_profile!r}"
        )
    if last_counter is not None and assignment.counter < last_counter:
        raise ReplayError(f"assignment counter {assignment.counter} is below {last_counter}")
    if parse_time(assignment.expires, "expires") <= (now or datetime.now(UTC)):
        raise ExpiredDocumentError(f"assignment expired at {assignment.expires}")
    check_release_order(assignment, installed_release_seq)
    return assignment


def check_release_order(assignment: Assignment, installed_release_seq: int | None) -> None:
    """Refuse a move to an older release than the installed one unless the director flags a rollback.

    Without an installed sequence (first install, or a model installed before sequences existed) or without
    one in the assignment (an older server), there is nothing to compare and the check passes.

    Args:
        assignment: A verified assignment.
        installed_release_seq: The ``release_seq`` of the installed model, or None.

    Raises:
        ReplayError: ``assignment.release_seq`` is below ``installed_release_seq`` and ``rollback`` is false.
    """
    if (
        installed_release_seq is not None
        and assignment.release_seq is not None
        and assignment.release_seq < installed_release_seq
        and not assignment.rollback
    ):
        raise ReplayError(
            f"assignment sends release {assignment.release_id} (sequence {assignment.release_seq}) older than"
            f" the installed one (sequence {installed_release_seq}) without an operator rollback flag"
        )


# ---- status reports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusReport:
    """A device's signed report about an update.

    Attributes:
        device_id: The reporting device.
        counter: Strictly increasing per device; the server refuses anything not above the last one.
        status: What happened.
        timestamp: When the device produced the report.
        release_id: The release concerned (from the assignment).
        rollout_id: The rollout concerned (from the assignment).
        target_sha256: The model the update is about.
        current_sha256: The model running on the device now.
        bytes_downloaded: Bytes transferred for this update so far.
        attack: True when a verification failure looks like an attack (Uptane's attack flag).
        details: Free-form reason, timings and similar (flat map of scalars).
    """

    device_id: str
    counter: int
    status: ReportStatus
    timestamp: str
    release_id: str | None = None
    rollout_id: str | None = None
    target_sha256: str | None = None
    current_sha256: str | None = None
    bytes_downloaded: int = 0
    attack: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-able body (the part that is signed)."""
        return {
            "_type": STATUS_REPORT_TYPE,
            "spec_version": SPEC_VERSION,
            "device_id": self.device_id,
            "counter": self.counter,
            "status": self.status.value,
            "timestamp": self.timestamp,
            "release_id": self.release_id,
            "rollout_id": self.rollout_id,
            "target_sha256": self.target_sha256,
            "current_sha256": self.current_sha256,
            "bytes_downloaded": self.bytes_downloaded,
            "attack": self.attack,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Self:
        """Parse and validate a body.

        Args:
            raw: The ``signed`` part of the envelope.

        Returns:
            The report.

        Raises:
            DocumentFormatError: A field is missing, unknown or invalid.
        """
        required = {"_type", "spec_version", "device_id", "counter", "status", "timestamp"}
        optional = {
            "release_id",
            "rollout_id",
            "target_sha256",
            "current_sha256",
            "bytes_downloaded",
            "attack",
            "details",
        }
        raw = _obj(raw, "status report", required | optional, required)
        _check_type(raw, STATUS_REPORT_TYPE)
        try:
            status = ReportStatus(raw["status"])
        except ValueError as exc:
            raise DocumentFormatError(f"status must be one of {[s.value for s in ReportStatus]}") from exc
        parse_time(raw["timestamp"], "timestamp")
        attack = raw.get("attack", False)
        if not isinstance(attack, bool):
            raise DocumentFormatError("attack must be a boolean")
        return cls(
            device_id=_str(raw, "device_id", pattern=DEVICE_ID_PATTERN),
            counter=_int(raw, "counter", minimum=1),
            status=status,
            timestamp=raw["timestamp"],
            release_id=_opt_str(raw, "release_id"),
            rollout_id=_opt_str(raw, "rollout_id"),
            target_sha256=_opt_str(raw, "target_sha256", pattern=SHA256_PATTERN),
            current_sha256=_opt_str(raw, "current_sha256", pattern=SHA256_PATTERN),
            bytes_downloaded=_int(raw, "bytes_downloaded") if "bytes_downloaded" in raw else 0,
            attack=attack,
            details=_details(raw.get("details", {})),
        )


def sign_status_report(report: StatusReport, device: Signer) -> dict[str, Any]:
    """Sign a status report with the device key.

    Args:
        report: The report.
        device: The device's signer.

    Returns:
        The envelope to POST.

    Raises:
        SignatureError: The signer failed.
    """
    return sign_document(report.to_dict(), [device])


_SignedRequestT = TypeVar("_SignedRequestT", "EnrolmentRequest", "TokenRequest", "StatusReport")


def verify_signed_request(
    envelope: bytes | str | Mapping[str, Any], device_key: Key, kind: type[_SignedRequestT]
) -> _SignedRequestT:
    """Verify a device-signed envelope and parse its body as ``kind``.

    Args:
        envelope: The request body.
        device_key: The device's public key.
        kind: ``EnrolmentRequest``, ``TokenRequest`` or ``StatusReport``.

    Returns:
        The parsed document.

    Raises:
        DocumentFormatError: The envelope or body is malformed.
        SignatureError: Not signed by ``device_key``.
    """
    return kind.from_dict(verify_document(envelope, [device_key]))


def check_report_counter(report: StatusReport, last_counter: int | None) -> None:
    """Refuse a report whose counter does not exceed the last accepted one.

    Args:
        report: The report.
        last_counter: The highest accepted counter for this device (None if none yet).

    Raises:
        ReplayError: ``report.counter <= last_counter``.
    """
    if last_counter is not None and report.counter <= last_counter:
        raise ReplayError(f"report counter {report.counter} is not above the last accepted {last_counter}")


def device_request_labels(tags: Sequence[str]) -> tuple[str, ...]:
    """Validate and normalise a tag list (sorted, unique) the way enrolment does.

    Args:
        tags: Labels.

    Returns:
        The sorted unique tuple.

    Raises:
        DocumentFormatError: A tag is invalid or there are too many.
    """
    return _labels(list(tags), "tags")
