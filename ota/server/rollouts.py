"""Rollout service: create, control and automatically advance or abort rollouts, under database locks.

The decisions come from :mod:`ota.server.rollout_machine`; this module loads rows, counts device outcomes,
writes results and the audit log. Every change to a rollout runs with the rollout's row locked
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has a single writer), and re-reads the row after taking
the lock, so several server processes ticking the same rollout never double-advance a phase.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, load_only

from ota.core.manifest import FAILURE_STATUSES, AdmissionState, ReportStatus
from ota.server.db import FLEET, bump_counter, lock_name, read_counter
from ota.server.errors import ConflictError, InvalidRequestError, NotFoundError, RolloutStateError
from ota.server.models import AssignmentJob, AuditEntry, Device, Release, Rollout, RolloutDevice
from ota.server.nudges import note_created, note_transition
from ota.server.rollout_machine import (
    ACTIVE_STATES,
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_MIN_REPORTS_FOR_ABORT,
    DEFAULT_PERCENTS,
    REVERTED_STATES,
    Phase,
    Policy,
    RolloutCounters,
    RolloutEvent,
    RolloutState,
    decide,
    in_cohort,
    transition,
    validate_phases,
)

TIMED_OUT = "timed-out"
IN_PROGRESS = (ReportStatus.DOWNLOADING.value, ReportStatus.DOWNLOADED.value, ReportStatus.INSTALLED.value)
FAILED = (*(s.value for s in FAILURE_STATUSES), TIMED_OUT)
DEFAULT_PHASES = [Phase(p) for p in DEFAULT_PERCENTS]


@dataclass(frozen=True)
class Selector:
    """Which devices a rollout targets: all of group, tags (every tag must match) and hardware profile."""

    profile: str
    group: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """A canonical string naming the selector (at most one active rollout per key)."""
        raw = json.dumps({"p": self.profile, "g": self.group, "t": sorted(self.tags)}, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form stored on the rollout."""
        return {"profile": self.profile, "group": self.group, "tags": sorted(self.tags)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Selector:
        """Read the stored form."""
        return cls(profile=raw["profile"], group=raw.get("group"), tags=tuple(raw.get("tags") or ()))

    def matches(self, device: Device) -> bool:
        """Return True when the device falls under this selector."""
        if device.hardware_profile != self.profile:
            return False
        if self.group is not None and device.group != self.group:
            return False
        return set(self.tags) <= set(device.tags or ())


def _phases(rollout: Rollout) -> list[Phase]:
    return [Phase(**p) for p in rollout.phases]


def _audit(session: Session, actor: str, action: str, subject: str, **details: Any) -> None:
    session.add(AuditEntry(actor=actor, action=action, subject=subject, details=details))


def create_rollout(
    session: Session,
    *,
    release_id: str,
    group: str | None = None,
    tags: tuple[str, ...] = (),
    phases: list[Phase] | None = None,
    failure_threshold: float = DEFAULT_FAILURE_THRESHOLD,
    min_reports_for_abort: int = DEFAULT_MIN_REPORTS_FOR_ABORT,
    abort_action: str = "abort",
    progress_timeout: int = 3600,
    actor: str,
    now: datetime | None = None,
) -> Rollout:
    """Start a rollout of a release to the devices of its profile matching group and tags.

    Args:
        session: A session inside a transaction.
        release_id: The release to roll out.
        group: Device group to target (None: any).
        tags: Tags every targeted device must carry.
        phases: Phases (default 1 → 10 → 50 → 100 %, each with the safe defaults of ``Phase``).
        failure_threshold: Failure rate that stops the rollout.
        min_reports_for_abort: Reports needed before the failure rule applies.
        abort_action: ``abort`` or ``pause`` when the failure rule fires.
        progress_timeout: Seconds after which a device stuck in progress counts as failed.
        actor: Who starts it.
        now: Current time (tests).

    Returns:
        The new rollout.

    Raises:
        NotFoundError: Unknown release.
        InvalidRequestError: Bad phases or thresholds.
        ConflictError: Another rollout is active for the same selector.
    """
    release = session.get(Release, release_id)
    if release is None:
        raise NotFoundError(f"no release {release_id!r}")
    try:
        phase_list = validate_phases(phases or DEFAULT_PHASES)
    except RolloutStateError as exc:
        raise InvalidRequestError(str(exc)) from exc
    if not 0 <= failure_threshold <= 1 or min_reports_for_abort < 1 or progress_timeout < 1:
        raise InvalidRequestError("failure_threshold in [0, 1], min_reports_for_abort ≥ 1, timeout ≥ 1")
    if abort_action not in {"abort", "pause"}:
        raise InvalidRequestError("abort_action must be 'abort' or 'pause'")
    selector = Selector(profile=release.profile, group=group, tags=tuple(sorted(set(tags))))
    # Serialise rollout creation per selector across processes, then check for an active one.
    lock_name(session, f"selector:{selector.key}")
    active = session.scalar(
        select(Rollout).where(
            Rollout.selector_key == selector.key, Rollout.state.in_([s.value for s in ACTIVE_STATES])
        )
    )
    if active is not None:
        raise ConflictError(f"rollout {active.id} is already active for this selector; finish or abort it")
    previous = _previous_release(session, selector, release)
    moment = now or datetime.now(UTC)
    rollout = Rollout(
        id=f"ro-{secrets.token_hex(6)}",
        release_id=release.id,
        previous_release_id=previous,
        selector=selector.to_dict(),
        selector_key=selector.key,
        phases=[vars(p) for p in phase_list],
        phase_index=0,
        state=RolloutState.RUNNING.value,
        failure_threshold=failure_threshold,
        min_reports_for_abort=min_reports_for_abort,
        abort_action=abort_action,
        progress_timeout=progress_timeout,
        phase_started_at=moment,
        created_at=moment,
        updated_at=moment,
    )
    session.add(rollout)
    _changed(session, rollout)
    _audit(session, actor, "rollout.create", rollout.id, release_id=release.id, selector=selector.to_dict())
    session.flush()
    note_created(session, rollout)  # MQTT nudge to the first cohort once this commits (no-op without broker)
    return rollout


def _previous_release(session: Session, selector: Selector, release: Release) -> str | None:
    # What the selected devices ran before: the release of the latest finished rollout on this selector.
    rows = session.scalars(
        select(Rollout)
        .where(Rollout.selector_key == selector.key, Rollout.release_id != release.id)
        .order_by(Rollout.created_at.desc())
    )
    for row in rows:
        if row.state == RolloutState.COMPLETED.value:
            return row.release_id
        if (
            row.state in {RolloutState.ABORTED.value, RolloutState.ROLLED_BACK.value}
            and row.previous_release_id
        ):
            return row.previous_release_id
    return None


def _changed(session: Session, rollout: Rollout) -> None:
    """Bump the generation for the rollout's selector only, and queue the bulk re-signing of its devices."""
    rollout.changed_generation = bump_counter(session, scoped=True)
    session.add(AssignmentJob(rollout_id=rollout.id, generation=rollout.changed_generation))


def _locked(session: Session, rollout_id: str) -> Rollout:
    rollout = session.scalar(
        select(Rollout)
        .where(Rollout.id == rollout_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id!r}")
    if session.get_bind().dialect.name == "sqlite":
        # SQLite ignores FOR UPDATE: take the database write lock, then re-read the row.
        lock_name(session, f"rollout:{rollout_id}")
        session.refresh(rollout)
    return rollout


def _apply(
    session: Session, rollout: Rollout, event: RolloutEvent, actor: str, reason: str, now: datetime
) -> None:
    old_state, old_index = rollout.state, rollout.phase_index
    state, index = transition(RolloutState(old_state), event, old_index, len(rollout.phases))
    rollout.state = state.value
    rollout.phase_index = index
    if index != old_index:
        rollout.phase_started_at = now
    rollout.updated_at = now
    rollout.reason = reason
    _changed(session, rollout)
    note_transition(session, rollout, event, old_state=old_state, old_index=old_index)  # nudge after commit
    _audit(
        session, actor, f"rollout.{event.value}", rollout.id, state=state.value, phase=index, reason=reason
    )


def control_rollout(
    session: Session, rollout_id: str, event: RolloutEvent, *, actor: str, reason: str | None = None
) -> Rollout:
    """Apply a manual event (pause, resume, abort, rollback, advance).

    Args:
        session: A session inside a transaction.
        rollout_id: The rollout.
        event: The event.
        actor: Who does it.
        reason: Why (the console asks for one); kept on the rollout and in the audit entry.

    Returns:
        The updated rollout.

    Raises:
        NotFoundError: Unknown rollout.
        RolloutStateError: Not allowed in the current state.
    """
    rollout = _locked(session, rollout_id)
    why = f"manual {event.value} by {actor}" + (f": {reason}" if reason else "")
    _apply(session, rollout, event, actor, why, datetime.now(UTC))
    return rollout


def counters(session: Session, rollout_id: str) -> RolloutCounters:
    """Count the outcomes of the devices a rollout targeted that are still accepted.

    Only targeted devices have rows (see :func:`record_device_status`); a device rejected or revoked since
    it reported no longer counts.
    """
    # All rows by status (an index-only scan of ix_rollout_devices_rollout_status), less the rows of the
    # few devices no longer accepted (found through ix_devices_state): no join over the whole cohort.
    by_status: dict[str, int] = {}
    for status, count in session.execute(
        select(RolloutDevice.status, func.count())
        .where(RolloutDevice.rollout_id == rollout_id)
        .group_by(RolloutDevice.status)
    ).tuples():
        by_status[status] = int(count)
    for status, count in session.execute(
        select(RolloutDevice.status, func.count())
        .join(Device, Device.id == RolloutDevice.device_id)
        .where(
            RolloutDevice.rollout_id == rollout_id,
            Device.state.in_([s.value for s in AdmissionState if s is not AdmissionState.ACCEPTED]),
        )
        .group_by(RolloutDevice.status)
    ).tuples():
        by_status[status] -= int(count)
    return RolloutCounters(
        succeeded=by_status.get(ReportStatus.COMMITTED.value, 0),
        failed=sum(by_status.get(s, 0) for s in FAILED),
        in_progress=sum(by_status.get(s, 0) for s in IN_PROGRESS),
    )


def tick_rollout(session: Session, rollout_id: str, *, now: datetime | None = None) -> RolloutEvent | None:
    """Time out stuck devices, then advance, pause, abort or roll back the rollout if its rules say so.

    Running rollouts advance and all non-terminal ones (paused and completed too) obey the failure rule;
    see :mod:`ota.server.rollout_machine`.

    Args:
        session: A session inside a transaction.
        rollout_id: The rollout.
        now: Current time (tests).

    Returns:
        The event applied, or None.

    Raises:
        NotFoundError: Unknown rollout.
    """
    moment = now or datetime.now(UTC)
    rollout = _locked(session, rollout_id)
    state = RolloutState(rollout.state)
    if state in REVERTED_STATES:
        return None
    session.execute(
        update(RolloutDevice)
        .where(
            RolloutDevice.rollout_id == rollout_id,
            RolloutDevice.status.in_(IN_PROGRESS),
            RolloutDevice.started_at < moment - timedelta(seconds=rollout.progress_timeout),
        )
        .values(status=TIMED_OUT, updated_at=moment)
    )
    phase_started = rollout.phase_started_at
    if phase_started.tzinfo is None:  # SQLite returns naive datetimes
        phase_started = phase_started.replace(tzinfo=UTC)
    phase = _phases(rollout)[rollout.phase_index]
    counted = counters(session, rollout_id)
    may_advance = state is RolloutState.RUNNING and moment - phase_started >= timedelta(
        seconds=phase.min_soak_seconds
    )
    may_fail = counted.failure_rate > rollout.failure_threshold
    if not (may_advance or may_fail):
        return None  # nothing can fire: skip counting the cohort (a scan of the selector's devices)
    # The cohort's size matters to an advance, and to the failure rule only while fewer final reports than
    # min_reports_for_abort arrived (a smaller cohort arms it sooner); a watched completed rollout with
    # enough reports is decided without the scan. None there is decide's "unknown", which cannot advance.
    counted_cohort = may_advance or counted.reported < rollout.min_reports_for_abort
    decision = decide(
        state=state,
        phase=phase,
        phase_started_at=phase_started,
        counters=counted,
        policy=Policy(
            rollout.failure_threshold, rollout.min_reports_for_abort, RolloutEvent(rollout.abort_action)
        ),
        now=moment,
        cohort_size=counted_cohort_size(session, rollout) if counted_cohort else None,
    )
    if decision is None:
        return None
    event, reason = decision
    _apply(session, rollout, event, "auto", reason, moment)
    return event


def _effective_percent(rollout: Rollout) -> float:
    """The share of the selector a rollout targets now (a completed rollout targets all of it)."""
    if rollout.state == RolloutState.COMPLETED.value:
        return 100.0
    return float(rollout.phases[rollout.phase_index]["percent"])


def cohort_size(session: Session, rollout: Rollout) -> int | None:
    """Count the accepted devices the rollout's current phase includes (its selector and cohort).

    Returns:
        The count, or None while no accepted device matches the selector at all: a rollout started
        before its fleet enrols waits for the fleet instead of racing through empty phases.
    """
    selector = Selector.from_dict(rollout.selector)
    percent = _effective_percent(rollout)
    devices = session.scalars(
        select(Device)
        .options(load_only(Device.id, Device.hardware_profile, Device.group, Device.tags))
        .where(Device.hardware_profile == selector.profile, Device.state == AdmissionState.ACCEPTED.value)
    )
    matching = [d.id for d in devices if selector.matches(d)]
    if not matching:
        return None
    return sum(1 for device_id in matching if in_cohort(device_id, rollout.id, percent))


def counted_cohort_size(session: Session, rollout: Rollout) -> int | None:
    """:func:`cohort_size`, counted once per generation: reused while nothing changed since.

    A bulk assignment job counts the cohort while it signs the rollout's devices (no scan at all after a
    phase change); otherwise the first tick after a change counts it and stores it on the rollout row (the
    caller holds its lock). Any change that could alter the count bumps the generation.
    """
    generation, fleet = read_counter(session), read_counter(session, FLEET)
    if (
        rollout.cohort_stamp == generation
        and rollout.cohort_fleet == fleet
        and rollout.cohort_count is not None
    ):
        return None if rollout.cohort_count < 0 else rollout.cohort_count
    size = cohort_size(session, rollout)
    rollout.cohort_count = -1 if size is None else size
    rollout.cohort_stamp, rollout.cohort_fleet = generation, fleet
    return size


def active_rollout_ids(session: Session) -> list[str]:
    """Return the rollouts the background ticker visits.

    Running and paused ones, and a completed one while it is the newest rollout of its selector: devices
    keep installing (and failing) after the last phase completed, and the failure rule still applies.
    """
    live = list(
        session.scalars(select(Rollout.id).where(Rollout.state.in_([s.value for s in ACTIVE_STATES])))
    )
    completed = session.execute(
        select(Rollout.id, Rollout.selector_key, Rollout.created_at).where(
            Rollout.state == RolloutState.COMPLETED.value
        )
    ).all()
    if not completed:
        return live
    newest = func.max(Rollout.created_at).label("newest")
    latest = {
        row.selector_key: row.newest
        for row in session.execute(
            select(Rollout.selector_key, newest)
            .where(Rollout.selector_key.in_({row.selector_key for row in completed}))
            .group_by(Rollout.selector_key)
        )
    }
    return live + [row.id for row in completed if row.created_at == latest[row.selector_key]]


def record_device_status(
    session: Session, *, rollout_id: str, device_id: str, release_id: str | None, status: str, now: datetime
) -> None:
    """Record a device's latest status in a rollout (idempotent: a repeated status changes nothing).

    A report counts only when the rollout really targeted the device: the device is accepted, matches the
    selector, sits inside the cohort the rollout has reached, and the report is about the rollout's own
    release (a device outside the cohort is sent the previous release under the same rollout id; its
    install of that release is not an outcome of this rollout). Anything else is ignored.

    A device that already committed or failed keeps that outcome unless it starts over (downloading) or
    reports another outcome (a rollback after a commit).

    Args:
        session: A session inside a transaction.
        rollout_id: The rollout the report names.
        device_id: The device.
        release_id: The release the report is about.
        status: The reported status.
        now: Receive time.
    """
    rollout = session.get(Rollout, rollout_id)
    device = session.get(Device, device_id)
    if (
        rollout is None
        or device is None
        or release_id != rollout.release_id
        or device.state != AdmissionState.ACCEPTED.value
        or not Selector.from_dict(rollout.selector).matches(device)
        or not in_cohort(device_id, rollout_id, _effective_percent(rollout))
    ):
        return
    row = session.get(RolloutDevice, (rollout_id, device_id))
    if row is None:
        session.add(
            RolloutDevice(
                rollout_id=rollout_id,
                device_id=device_id,
                status=status,
                phase_index=rollout.phase_index,
                started_at=now,
                updated_at=now,
            )
        )
        return
    if row.status == status:
        return
    final = {ReportStatus.COMMITTED.value, *FAILED}
    if row.status in final and status not in final and status != ReportStatus.DOWNLOADING.value:
        # A late or re-ordered progress report must not undo an outcome already counted.
        return
    if status == ReportStatus.DOWNLOADING.value:
        row.started_at = now
    row.status = status
    row.updated_at = now
