"""The console's read queries: fleet overview, device pages, device detail and trace, releases, rollouts,
audit log and key/metadata expiry. Plain data out (dataclasses), no HTML.

The devices page must stay fast at 100,000 devices (``bench/console_bench.py``): it pages by id (keyset:
``id > last id of the previous page``, the primary key's order), every filter is an indexed column (state,
profile, group, installed sha256, last report; migration 0004 added the last two), and the id search is
a prefix match that walks the primary key from the prefix on. Release labels come from the (small)
releases table once per request, never from a join per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Select, func, select, text
from sqlalchemy.orm import Session

from ota.core.manifest import FAILURE_STATUSES, ReportStatus
from ota.server.keys import TUF_ROLES, Keyring
from ota.server.models import (
    AuditEntry,
    Delta,
    Device,
    Release,
    Rollout,
    RolloutDevice,
    StatusReportRow,
    TufMetadata,
)
from ota.server.rollouts import counters
from ota.server.routes.operators import installed_release, report_message

PAGE_SIZE = 50
#: Last-seen filters of the devices page: name → (label, newer than, older than).
SEEN_WINDOWS: dict[str, tuple[str, timedelta | None, timedelta | None]] = {
    "1h": ("last hour", timedelta(hours=1), None),
    "24h": ("last 24 hours", timedelta(days=1), None),
    "7d": ("last 7 days", timedelta(days=7), None),
    "stale": ("not for 7 days", None, timedelta(days=7)),
}
FAILED_STATUSES = frozenset(s.value for s in FAILURE_STATUSES)
#: Statuses that change what a slot holds (written to the spare slot, switched to, switched back).
INSTALL_STATUSES = (
    ReportStatus.INSTALLED.value,
    ReportStatus.COMMITTED.value,
    ReportStatus.ROLLED_BACK.value,
)


def aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def release_labels(session: Session) -> dict[str, str]:
    """sha256 → ``model version`` for every release (a few hundred rows at most)."""
    labels: dict[str, str] = {}
    for sha256, model, version in session.execute(
        select(Release.sha256, Release.model, Release.version).order_by(Release.created_at)
    ):
        labels[sha256] = f"{model} {version}"
    return labels


# --- fleet overview ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    """Device counts by installed release, profile, state and last report."""

    total: int
    by_release: list[tuple[str, int]]
    by_profile: list[tuple[str, int]]
    by_state: list[tuple[str, int]]
    by_seen: list[tuple[str, int]]
    active_rollouts: int


def _grouped(session: Session, column: Any) -> list[tuple[Any, int]]:
    rows = session.execute(select(column, func.count()).group_by(column).order_by(func.count().desc()))
    return [(value, int(count)) for value, count in rows]


def overview(session: Session, *, now: datetime | None = None) -> Overview:
    """Count the fleet four ways (each an index-only group-by or range count)."""
    moment = now or datetime.now(UTC)
    labels = release_labels(session)
    by_release = [
        (labels.get(sha, sha[:12]) if sha else "nothing installed", count)
        for sha, count in _grouped(session, Device.current_sha256)
    ]
    total = sum(count for _label, count in by_release)
    by_seen = []
    previous = 0
    for name in ("1h", "24h", "7d"):
        newer = SEEN_WINDOWS[name][1]
        assert newer is not None
        within = int(session.scalar(select(func.count()).where(Device.updated_at > moment - newer)) or 0)
        by_seen.append((SEEN_WINDOWS[name][0], within - previous))
        previous = within
    by_seen.append((SEEN_WINDOWS["stale"][0], total - previous))
    active = session.scalar(select(func.count()).where(Rollout.state.in_(("running", "paused"))))
    return Overview(
        total=total,
        by_release=by_release,
        by_profile=[(str(v), c) for v, c in _grouped(session, Device.hardware_profile)],
        by_state=[(str(v), c) for v, c in _grouped(session, Device.state)],
        by_seen=by_seen,
        active_rollouts=int(active or 0),
    )


# --- devices page --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceFilter:
    """The devices page's filters (all optional); ``q`` is an id prefix."""

    q: str | None = None
    state: str | None = None
    profile: str | None = None
    group: str | None = None
    release: str | None = None  # a release id, or "none" for devices with nothing installed
    seen: str | None = None

    def params(self) -> dict[str, str]:
        """The non-empty filters, for links to the next page."""
        return {k: v for k, v in vars(self).items() if v}


@dataclass(frozen=True)
class DeviceRow:
    """One line of the devices page."""

    id: str
    state: str
    profile: str
    group: str | None
    installed: str | None
    last_seen: datetime


@dataclass(frozen=True)
class DevicePage:
    """A page of devices, the id the next page starts after (None at the end) and the filtered total."""

    rows: list[DeviceRow]
    next_after: str | None
    total: int


def _filtered(session: Session, query: Select[Any], f: DeviceFilter, now: datetime) -> Select[Any] | None:
    if f.q:
        # Prefix search on the primary key: the scan starts at the prefix (the LIKE then filters).
        escaped = f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Device.id >= f.q, Device.id.like(f"{escaped}%", escape="\\"))
    if f.state:
        query = query.where(Device.state == f.state)
    if f.profile:
        query = query.where(Device.hardware_profile == f.profile)
    if f.group:
        query = query.where(Device.group == f.group)
    if f.release == "none":
        query = query.where(Device.current_sha256.is_(None))
    elif f.release:
        sha256 = session.scalar(select(Release.sha256).where(Release.id == f.release))
        if sha256 is None:
            return None
        query = query.where(Device.current_sha256 == sha256)
    if f.seen in SEEN_WINDOWS:
        _label, newer, older = SEEN_WINDOWS[f.seen]
        if newer is not None:
            query = query.where(Device.updated_at > now - newer)
        if older is not None:
            query = query.where(Device.updated_at <= now - older)
    return query


def device_page(
    session: Session,
    f: DeviceFilter,
    *,
    after: str | None = None,
    limit: int = PAGE_SIZE,
    now: datetime | None = None,
) -> DevicePage:
    """One page of devices in id order, after ``after``, with the filtered total."""
    moment = now or datetime.now(UTC)
    columns = select(
        Device.id,
        Device.state,
        Device.hardware_profile,
        Device.group,
        Device.current_sha256,
        Device.updated_at,
    )
    query = _filtered(session, columns, f, moment)
    count_query = _filtered(session, select(func.count()).select_from(Device), f, moment)
    if query is None or count_query is None:
        return DevicePage([], None, 0)
    if after:
        query = query.where(Device.id > after)
    rows = session.execute(query.order_by(Device.id).limit(limit + 1)).all()
    labels = release_labels(session) if rows else {}
    page = [
        DeviceRow(
            id=r.id,
            state=r.state,
            profile=r.hardware_profile,
            group=r.group,
            installed=labels.get(r.current_sha256, r.current_sha256[:12]) if r.current_sha256 else None,
            last_seen=aware(r.updated_at),
        )
        for r in rows[:limit]
    ]
    next_after = page[-1].id if len(rows) > limit else None
    return DevicePage(page, next_after, int(session.scalar(count_query) or 0))


@dataclass(frozen=True)
class FilterChoices:
    """The values the devices page's drop-downs offer."""

    profiles: list[str]
    groups: list[str]
    releases: list[tuple[str, str]]  # (id, label)


def distinct_values(session: Session, column: str, *, limit: int = 200) -> list[str]:
    """The distinct non-null values of an indexed ``devices`` column, by a loose index scan: one index
    probe per value (``SELECT DISTINCT`` reads all 100,000 index entries instead). SQLite and PostgreSQL."""
    if column not in {"hardware_profile", "group"}:
        raise ValueError(f"not an indexed filter column: {column}")
    quoted = f'"{column}"'
    query = text(
        f"WITH RECURSIVE v(value) AS ("  # noqa: S608 (the column is one of two fixed names)
        f" SELECT MIN({quoted}) FROM devices"
        f" UNION ALL SELECT (SELECT MIN({quoted}) FROM devices WHERE {quoted} > v.value)"
        f" FROM v WHERE v.value IS NOT NULL"
        f") SELECT value FROM v WHERE value IS NOT NULL LIMIT :limit"
    )
    return [str(value) for value in session.scalars(query, {"limit": limit})]


def filter_choices(session: Session) -> FilterChoices:
    """Distinct profiles and groups (loose index scans) and every release."""
    releases = session.execute(
        select(Release.id, Release.model, Release.version, Release.profile).order_by(
            Release.created_at.desc()
        )
    )
    return FilterChoices(
        profiles=distinct_values(session, "hardware_profile"),
        groups=distinct_values(session, "group"),
        releases=[(r.id, f"{r.model} {r.version} ({r.profile})") for r in releases],
    )


# --- device detail and trace ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """What the server knows of where a release came from: its provenance fields and source URI."""

    model_uri: str | None
    registered_model: str | None
    model_version: str | None
    run_id: str | None
    data_fingerprint: str | None
    source_uri: str | None


def trace_of(release: Release) -> Trace:
    """Read a release's provenance: the proper fields first, then the ``source_uri`` query string
    (``models:/NAME/VERSION?run_id=…&data_fingerprint=…``) that releases published before migration 0002
    carry; ``edgefleet trace`` reads the same two places (``registry.trace``) and then asks MLflow."""
    name = version = model_uri = None
    query: dict[str, list[str]] = {}
    if release.source_uri:
        parts = urlsplit(release.source_uri)
        query = parse_qs(parts.query)
        segments = [s for s in parts.path.split("/") if s]
        if parts.scheme == "models" and len(segments) == 2:
            name, version = segments
            model_uri = f"models:/{name}/{version}"
    return Trace(
        model_uri=model_uri,
        registered_model=name,
        model_version=version,
        run_id=release.mlflow_run_id or next(iter(query.get("run_id", [])), None),
        data_fingerprint=release.data_fingerprint or next(iter(query.get("data_fingerprint", [])), None),
        source_uri=release.source_uri,
    )


@dataclass(frozen=True)
class ReportRow:
    """One status report as the console shows it."""

    counter: int
    status: str
    received_at: datetime
    release: str | None
    rollout_id: str | None
    attack: bool
    message: str | None
    target_sha256: str | None


@dataclass(frozen=True)
class DeviceDetail:
    """Everything the device page shows."""

    device: Device
    installed: Release | None
    trace: Trace | None
    reports: list[ReportRow]
    failures: list[ReportRow]
    installs: list[ReportRow]
    rollouts: list[tuple[str, str, int, datetime]]  # (rollout id, status, phase, updated)


def _report_rows(rows: Iterable[StatusReportRow], names: dict[str, str]) -> list[ReportRow]:
    return [
        ReportRow(
            counter=r.counter,
            status=r.status,
            received_at=aware(r.received_at),
            release=names.get(r.release_id or "", r.release_id),
            rollout_id=r.rollout_id,
            attack=bool((r.body or {}).get("attack")),
            message=report_message(r.body),
            target_sha256=(r.body or {}).get("target_sha256"),
        )
        for r in rows
    ]


def device_detail(session: Session, device_id: str, *, reports: int = 30) -> DeviceDetail | None:
    """Read one device, its installed release and trace, recent reports, failures and install history."""
    device = session.get(Device, device_id)
    if device is None:
        return None
    installed = installed_release(session, device.current_sha256)
    names = {
        r.id: f"{r.model} {r.version}"
        for r in session.execute(select(Release.id, Release.model, Release.version))
    }
    base = select(StatusReportRow).where(StatusReportRow.device_id == device_id)
    order = StatusReportRow.id.desc()
    recent = session.scalars(base.order_by(order).limit(reports))
    failures = session.scalars(
        base.where(StatusReportRow.status.in_(FAILED_STATUSES)).order_by(order).limit(20)
    )
    installs = session.scalars(
        base.where(StatusReportRow.status.in_(INSTALL_STATUSES)).order_by(order).limit(20)
    )
    rollouts = session.execute(
        select(
            RolloutDevice.rollout_id,
            RolloutDevice.status,
            RolloutDevice.phase_index,
            RolloutDevice.updated_at,
        )
        .where(RolloutDevice.device_id == device_id)
        .order_by(RolloutDevice.updated_at.desc())
        .limit(20)
    )
    failure_rows = _report_rows(failures, names)
    return DeviceDetail(
        device=device,
        installed=installed,
        trace=trace_of(installed) if installed is not None else None,
        reports=_report_rows(recent, names),
        failures=failure_rows,
        installs=_report_rows(installs, names),
        rollouts=[(r[0], r[1], r[2], aware(r[3])) for r in rollouts],
    )


# --- releases ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaRow:
    """A delta of a release: from which base, and its size."""

    base: str
    length: int


@dataclass(frozen=True)
class ReleaseRow:
    """A release with its deltas and provenance."""

    release: Release
    trace: Trace
    deltas: list[DeltaRow] = field(default_factory=list)


def releases(session: Session, *, limit: int = 200) -> list[ReleaseRow]:
    """Releases, newest first, each with its deltas per base and its provenance."""
    rows = list(session.scalars(select(Release).order_by(Release.created_at.desc()).limit(limit)))
    names = {r.id: f"{r.model} {r.version}" for r in session.scalars(select(Release))}
    by_release: dict[str, list[DeltaRow]] = {}
    if rows:
        for delta in session.scalars(
            select(Delta).where(Delta.release_id.in_([r.id for r in rows])).order_by(Delta.id)
        ):
            by_release.setdefault(delta.release_id, []).append(
                DeltaRow(names.get(delta.base_release_id, delta.base_release_id), delta.length)
            )
    return [ReleaseRow(r, trace_of(r), by_release.get(r.id, [])) for r in rows]


# --- rollouts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutRow:
    """A rollout line: its release, state, phase and counts."""

    rollout: Rollout
    release: str
    succeeded: int
    failed: int
    in_progress: int


def rollouts(session: Session, *, limit: int = 100) -> list[RolloutRow]:
    """Rollouts, newest first, with their counters."""
    names = {r.id: f"{r.model} {r.version}" for r in session.scalars(select(Release))}
    result = []
    for rollout in session.scalars(select(Rollout).order_by(Rollout.created_at.desc()).limit(limit)):
        counts = counters(session, rollout.id)
        result.append(
            RolloutRow(
                rollout,
                names.get(rollout.release_id, rollout.release_id),
                counts.succeeded,
                counts.failed,
                counts.in_progress,
            )
        )
    return result


# --- audit log -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    """Audit log filters: actor and action prefixes, a time window, and the id to page before."""

    actor: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def params(self) -> dict[str, str]:
        """The non-empty filters as query parameters."""
        out = {k: v for k, v in (("actor", self.actor), ("action", self.action)) if v}
        for key, moment in (("since", self.since), ("until", self.until)):
            if moment is not None:
                out[key] = moment.strftime("%Y-%m-%dT%H:%M")
        return out


def _prefix(column: Any, value: str) -> Any:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(f"{escaped}%", escape="\\")


def audit_entries(
    session: Session, f: AuditFilter, *, before: int | None = None, limit: int = 100
) -> tuple[list[AuditEntry], int | None]:
    """Audit entries, newest first, filtered; returns the page and the id the next page starts before."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if f.actor:
        query = query.where(_prefix(AuditEntry.actor, f.actor))
    if f.action:
        query = query.where(_prefix(AuditEntry.action, f.action))
    if f.since:
        query = query.where(AuditEntry.at >= f.since)
    if f.until:
        query = query.where(AuditEntry.at < f.until)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    rows = list(session.scalars(query))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


# --- keys and metadata expiry --------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleExpiry:
    """A TUF role's newest signed version and how long it stays valid."""

    role: str
    version: int
    expires: datetime
    days_left: float
    lifetime_days: float
    level: str  # "ok", "warn" (under a quarter of its lifetime or under 30 days for root/targets), "expired"
    online: bool
    threshold: int
    keyids: list[str]


def expiries(
    session: Session, keyring: Keyring, lifetimes: dict[str, int], *, now: datetime | None = None
) -> list[RoleExpiry]:
    """Each TUF role's newest metadata expiry with its days left and a warning level, plus its keys.

    Timestamp and snapshot are re-signed automatically before they expire (the server's background job);
    root and targets need an operator (root's keys are usually offline), hence their 30-day warning.
    """
    moment = now or datetime.now(UTC)
    grouped = select(TufMetadata.role, func.max(TufMetadata.version)).group_by(TufMetadata.role)
    newest: dict[str, int] = {str(role): int(version) for role, version in session.execute(grouped).tuples()}
    result = []
    for role in TUF_ROLES:
        version = newest.get(role)
        if version is None:
            continue
        expires = session.scalar(
            select(TufMetadata.expires).where(TufMetadata.role == role, TufMetadata.version == version)
        )
        assert expires is not None
        expires = aware(expires)
        days_left = (expires - moment).total_seconds() / 86400
        lifetime = lifetimes.get(role, 0) / 86400
        warn_at = max(lifetime / 4, 30.0 if role in ("root", "targets") else 0.0)
        level = "expired" if days_left <= 0 else "warn" if days_left < warn_at else "ok"
        keys = keyring.roles.get(role)
        result.append(
            RoleExpiry(
                role=role,
                version=int(version),
                expires=expires,
                days_left=days_left,
                lifetime_days=lifetime,
                level=level,
                online=bool(keys and any(k.uri for k in keys.keys)),
                threshold=keys.threshold if keys else 0,
                keyids=[k.public.keyid[:16] for k in keys.keys] if keys else [],
            )
        )
    return result


def chart_bars(
    items: Sequence[tuple[str, int]], *, width: int = 190, limit: int = 12
) -> list[dict[str, Any]]:
    """Lay out a horizontal bar chart (rendered as inline SVG by the template): label, count, bar width,
    y position. The longest bar fills ``width``; more than ``limit`` items fold into "other"."""
    shown = list(items[:limit])
    rest = sum(count for _label, count in items[limit:])
    if rest:
        shown.append(("other", rest))
    top = max((count for _label, count in shown), default=0) or 1
    return [
        {"label": label, "count": count, "width": max(1, round(width * count / top)), "y": i * 22}
        for i, (label, count) in enumerate(shown)
    ]
