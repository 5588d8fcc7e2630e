"""SQLAlchemy 2.0 models of the OTA server; the Alembic migrations in ``migrations/`` create them.

The same schema runs on SQLite (development) and PostgreSQL (production): only portable types, JSON for
small lists/maps, and no database-specific defaults. Times are stored as timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names so Alembic migrations are the same on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Return the current aware UTC time (the default for every timestamp column)."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with the shared naming convention."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class Counter(Base):
    """Named monotonic counters; ``generation`` invalidates every process's assignment cache."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class TufMetadata(Base):
    """Every version of every TUF role's signed metadata, as the exact bytes served."""

    __tablename__ = "tuf_metadata"
    role: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    expires: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Release(Base):
    """A published model artifact: one TUF target."""

    __tablename__ = "releases"
    __table_args__ = (
        UniqueConstraint("model", "version", "profile", name="uq_releases_model_version_profile"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    profile: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    length: Mapped[int] = mapped_column(BigInteger)
    target_name: Mapped[str] = mapped_column(String(512))
    source_uri: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # Provenance (migration 0002): the MLflow run and the training data fingerprint, for `edgefleet trace`.
    mlflow_run_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data_fingerprint: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The release's self-test vectors (migration 0002): their own TUF target, named by the model target.
    selftest_target: Mapped[str | None] = mapped_column(String(512), nullable=True)
    selftest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Delta(Base):
    """A patch from an earlier release's artifact to a release's artifact: also a TUF target."""

    __tablename__ = "deltas"
    __table_args__ = (UniqueConstraint("base_sha256", "result_sha256", name="uq_deltas_base_result"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id"), index=True)
    base_release_id: Mapped[str] = mapped_column(ForeignKey("releases.id"))
    base_sha256: Mapped[str] = mapped_column(String(64))
    result_sha256: Mapped[str] = mapped_column(String(64))
    target_name: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(BigInteger)


class OperatorToken(Base):
    """An operator API token; only its sha256 is stored."""

    __tablename__ = "operator_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ProvisioningToken(Base):
    """A token devices present to enrol; only its sha256 is stored."""

    __tablename__ = "provisioning_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    auto_accept: Mapped[bool] = mapped_column(Boolean, default=False)
    group: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Device(Base):
    """An enrolled device and its admission state."""

    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[dict[str, Any]]
    keyid: Mapped[str] = mapped_column(String(64))
    hardware_profile: Mapped[str] = mapped_column(String(64), index=True)
    hardware: Mapped[dict[str, Any]]
    tags: Mapped[list[Any]]
    group: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    provisioning_token_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_report_counter: Mapped[int] = mapped_column(BigInteger, default=0)
    # Indexed since migration 0004: the console filters and groups the fleet by both.
    current_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Rollout(Base):
    """A staged rollout of one release to the devices a selector matches."""

    __tablename__ = "rollouts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id"))
    previous_release_id: Mapped[str | None] = mapped_column(ForeignKey("releases.id"), nullable=True)
    selector: Mapped[dict[str, Any]]
    selector_key: Mapped[str] = mapped_column(String(256), index=True)
    phases: Mapped[list[Any]]
    phase_index: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), index=True)
    failure_threshold: Mapped[float]
    min_reports_for_abort: Mapped[int] = mapped_column(Integer)
    abort_action: Mapped[str] = mapped_column(String(16), default="abort")
    progress_timeout: Mapped[int] = mapped_column(Integer)
    phase_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Migration 0003: the generation of the rollout's last change (assignments signed before it are stale
    # for the devices its selector matches), and its current phase's cohort size as counted at generation
    # ``cohort_stamp`` and fleet counter ``cohort_fleet`` (-1: no accepted device matches the selector);
    # reused while both counters hold.
    changed_generation: Mapped[int] = mapped_column(BigInteger, default=0)
    cohort_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cohort_stamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cohort_fleet: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class RolloutDevice(Base):
    """The latest status of one device in one rollout (what the rollout counters aggregate)."""

    __tablename__ = "rollout_devices"
    __table_args__ = (Index("ix_rollout_devices_rollout_status", "rollout_id", "status"),)
    rollout_id: Mapped[str] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(32))
    phase_index: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class StatusReportRow(Base):
    """Every accepted status report, as received."""

    __tablename__ = "status_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    counter: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32))
    release_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rollout_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    body: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """One operator (or automatic) action."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    details: Mapped[dict[str, Any]]


class ConsoleSession(Base):
    """A signed-in web console session (migration 0004); only the sha256 of the cookie value is stored.

    The session names the operator token it was opened with: every request re-reads that token, so a
    revoked token or a narrowed scope ends or narrows its sessions at once.
    """

    __tablename__ = "console_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class SignedAssignment(Base):
    """A device's signed assignment as served, shared by every server process (migration 0003).

    Keyed by device and the model hash the device reports (``""`` when none). Valid while its generation is
    at least the assignment floor and the ``changed_generation`` of every rollout whose selector matches
    the device, and until ``refresh_at`` (Unix seconds): see :mod:`ota.server.assignments`.
    """

    __tablename__ = "signed_assignments"
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    current_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    refresh_at: Mapped[int] = mapped_column(BigInteger)
    poll_interval: Mapped[int] = mapped_column(Integer)
    etag: Mapped[str] = mapped_column(String(40))
    body: Mapped[bytes] = mapped_column(LargeBinary)


class AssignmentJob(Base):
    """A bulk re-signing job: the devices of a rollout's selector (or all devices) after a change."""

    __tablename__ = "assignment_jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    fleet: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the fleet counter when split
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)


class AssignmentJobSlice(Base):
    """One device-id range of a job, processed in chunks; its cursor survives a killed worker."""

    __tablename__ = "assignment_job_slices"
    job_id: Mapped[int] = mapped_column(ForeignKey("assignment_jobs.id"), primary_key=True)
    slice: Mapped[int] = mapped_column(Integer, primary_key=True)
    cursor: Mapped[str] = mapped_column(String(64))  # last device id done ("" before the first)
    until: Mapped[str | None] = mapped_column(String(64), nullable=True)  # last id of the range (None: open)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    signed: Mapped[int] = mapped_column(Integer, default=0)
    matched: Mapped[int] = mapped_column(Integer, default=0)
    cohort: Mapped[int] = mapped_column(Integer, default=0)
    consistent: Mapped[bool] = mapped_column(Boolean, default=True)
