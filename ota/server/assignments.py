"""Shared signed assignments: one signature per device and decision for every server process and host.

Signed assignments live in the ``signed_assignments`` table, keyed by device and reported model hash; each
process keeps its :class:`~ota.server.director.AssignmentCache` in front of it (the poll hot path), so a
steady-state poll never reaches the database.

**Validity.** A stored assignment signed at generation ``g`` is still the director's answer while

* ``g`` is at least the *assignment floor* (raised by every global change: release publish, key rotation),
* ``g`` is at least the ``changed_generation`` of every rollout whose selector matches the device (a
  rollout change only alters the answers of the devices its selector matches), and
* its expiry bucket has not reached its refresh time.

Admission decisions delete the device's rows. Each process holds a :class:`Validity` snapshot (floor and
the newest change per selector), reloaded whenever it sees a newer generation.

**Bulk jobs.** A rollout change (create, advance, pause, resume, abort, rollback) queues an
``assignment_jobs`` row in its own transaction; a global change queues one for all devices. Every server
process runs :func:`run_jobs` in the background: a job is split into device-id slices, and a worker takes a
slice with ``FOR UPDATE SKIP LOCKED``, signs the next chunk of its devices and writes the rows and the
slice's cursor in one transaction. A killed worker's transaction rolls back and its lock drops; another
worker continues from the stored cursor, so nothing is lost or half-written. Workers never take the same
slice at once, so two workers never sign the same assignment. While a job runs, a polling device gets the
old assignment or the new one; a poll that finds no valid row signs at poll time, under the device's row
lock, so that one is signed once too.

**Equivalence.** Poll-time and bulk signing share :func:`ota.server.director.sign_answer` and
:func:`ota.server.director.choose_release`, so a bulk-signed assignment is the same bytes a poll would sign.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, load_only, sessionmaker

from ota.core.manifest import AdmissionState
from ota.server.db import ASSIGNMENT_FLOOR, FLEET, GENERATION, read_counter, transaction
from ota.server.director import CachedAnswer, choose_release, sign_answer
from ota.server.errors import ForbiddenError, NotFoundError
from ota.server.models import (
    AssignmentJob,
    AssignmentJobSlice,
    Counter,
    Delta,
    Device,
    Release,
    Rollout,
    SignedAssignment,
)
from ota.server.rollout_machine import RolloutState, in_cohort
from ota.server.rollouts import Selector

if TYPE_CHECKING:
    from ota.server.context import ServerContext

log = logging.getLogger(__name__)

#: Device-id slices per job: the unit two workers split a job by (and resume).
SLICES = 16
#: Devices signed and written per transaction.
CHUNK = 1000


@dataclass(frozen=True)
class Validity:
    """What a stored assignment must have been signed after, as of one generation.

    Attributes:
        generation: The generation this snapshot was read at.
        floor: The assignment floor.
        selectors: ``(selector, newest changed_generation of its rollouts)``.
        rollouts: Every rollout, newest first, read after the generation (detached rows): poll-time
            signing decides from them without another query.
        releases: The releases those rollouts name, by id.
    """

    generation: int = -1
    floor: int = 0
    selectors: tuple[tuple[Selector, int], ...] = ()
    rollouts: tuple[Rollout, ...] = ()
    releases: dict[str, Release] = field(default_factory=dict)

    def required(self, device: Device) -> int:
        """Return the generation a stored assignment of ``device`` must have at least."""
        need = self.floor
        for selector, changed in self.selectors:
            if changed > need and selector.matches(device):
                need = changed
        return need


def load_validity(session: Session) -> Validity:
    """Read the floor and each selector's newest rollout change (a few rows: one per selector)."""
    values = dict(
        session.execute(
            select(Counter.name, Counter.value).where(Counter.name.in_([GENERATION, ASSIGNMENT_FLOOR]))
        )
        .tuples()
        .all()
    )
    # The counters first: decisions made from the rollouts read after them are at least that new.
    rollouts = tuple(session.scalars(select(Rollout).order_by(Rollout.created_at.desc(), Rollout.id.desc())))
    newest: dict[str, tuple[dict[str, Any], int]] = {}
    for rollout in rollouts:
        key, changed = rollout.selector_key, int(rollout.changed_generation)
        if key not in newest or changed > newest[key][1]:
            newest[key] = (rollout.selector, changed)
    return Validity(
        generation=int(values.get(GENERATION, 0)),
        floor=int(values.get(ASSIGNMENT_FLOOR, 0)),
        selectors=tuple((Selector.from_dict(raw), changed) for raw, changed in newest.values()),
        rollouts=rollouts,
        releases=_releases(
            session, [r.release_id for r in rollouts] + [r.previous_release_id for r in rollouts]
        ),
    )


@dataclass
class ValidityHolder:
    """A process's current :class:`Validity`, reloaded when the process has seen a newer generation."""

    current: Validity = field(default_factory=Validity)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, sessions: sessionmaker[Session], generation: int) -> Validity:
        """Return a snapshot at least as new as ``generation``."""
        snapshot = self.current
        if snapshot.generation >= generation:
            return snapshot
        with self.lock:
            if self.current.generation < generation:
                with sessions() as session:
                    self.current = load_validity(session)
            return self.current


def _answer_of(row: SignedAssignment, generation: int) -> CachedAnswer:
    return CachedAnswer(
        body=row.body,
        etag=row.etag.encode(),
        generation=generation,
        refresh_at=row.refresh_at,
        poll_interval=str(row.poll_interval).encode(),
    )


def _row_of(device_id: str, current_key: str, answer: CachedAnswer) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "current_key": current_key,
        "generation": answer.generation,
        "refresh_at": int(answer.refresh_at),
        "poll_interval": int(answer.poll_interval),
        "etag": answer.etag.decode(),
        "body": answer.body,
    }


def store_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert or replace signed assignments; a row never replaces one signed at a newer generation."""
    if not rows:
        return
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(SignedAssignment)
    statement = statement.on_conflict_do_update(
        index_elements=[SignedAssignment.device_id, SignedAssignment.current_key],
        set_={
            name: statement.excluded[name]
            for name in ("generation", "refresh_at", "poll_interval", "etag", "body")
        },
        where=SignedAssignment.generation <= statement.excluded.generation,
    )
    session.execute(statement, rows)


def forget_device(session: Session, device_id: str) -> None:
    """Delete a device's stored assignments (its admission state changed), in the caller's transaction."""
    session.execute(delete(SignedAssignment).where(SignedAssignment.device_id == device_id))


def _load(session: Session, device_id: str, key: str) -> tuple[Device, SignedAssignment | None]:
    found = session.execute(
        select(Device, SignedAssignment)
        .outerjoin(
            SignedAssignment,
            (SignedAssignment.device_id == Device.id) & (SignedAssignment.current_key == key),
        )
        .where(Device.id == device_id)
        .execution_options(populate_existing=True)
    ).first()
    if found is None:
        raise NotFoundError(f"no device {device_id!r}")
    device, row = found._tuple()
    if device.state != AdmissionState.ACCEPTED.value:
        raise ForbiddenError(f"device {device_id} is {device.state}, not accepted")
    return device, row


def serve_assignment(ctx: ServerContext, device_id: str, current: str | None, now: float) -> CachedAnswer:
    """Return a device's answer: from the shared table when still valid, else signed now (once).

    Args:
        ctx: The server context.
        device_id: The device.
        current: The model hash the device reports.
        now: Unix time.

    Returns:
        The answer (also put in this process's cache).

    Raises:
        NotFoundError: Unknown device.
        ForbiddenError: The device is not accepted.
    """
    key = current or ""
    validity = ctx.validity.get(ctx.sessions, ctx.cache.generation)
    with ctx.sessions() as session:
        device, row = _load(session, device_id, key)
        if row is not None and row.generation >= validity.required(device) and now < row.refresh_at:
            ctx.metrics.assignments_shared += 1
            answer = _answer_of(row, validity.generation)
            ctx.cache.put(device_id, key, answer)
            return answer
    with transaction(ctx.sessions) as session:
        if session.get_bind().dialect.name == "postgresql":
            # One signer per device across processes: the others wait here, then find its row.
            session.execute(select(Device.id).where(Device.id == device_id).with_for_update())
        validity = ctx.validity.get(ctx.sessions, read_counter(session))
        device, row = _load(session, device_id, key)
        if row is not None and row.generation >= validity.required(device) and now < row.refresh_at:
            ctx.metrics.assignments_shared += 1
            answer = _answer_of(row, validity.generation)
        else:
            # Decided from the snapshot (as ``build_answer`` decides from the database), counter included.
            chosen, rollout, rollback = choose_release(validity.rollouts, device)
            release = validity.releases.get(chosen) if chosen else None
            delta = None
            if release is not None and current and current != release.sha256:
                delta = session.scalar(
                    select(Delta).where(Delta.base_sha256 == current, Delta.result_sha256 == release.sha256)
                )
            answer = sign_answer(
                device_id=device_id,
                hardware_profile=device.hardware_profile,
                generation=validity.generation,
                release=release,
                rollout_id=rollout.id if rollout else None,
                rollback=rollback,
                delta=delta,
                signer=ctx.keyring.signer("director"),
                config=ctx.director,
                now=now,
            )
            store_rows(session, [_row_of(device_id, key, answer)])
            ctx.metrics.assignments_signed += 1
    ctx.cache.put(device_id, key, answer)
    return answer


def enqueue_job(session: Session, rollout_id: str | None, generation: int) -> None:
    """Queue a bulk job for a rollout's selector (None: every device), in the caller's transaction."""
    session.add(AssignmentJob(rollout_id=rollout_id, generation=generation))


@dataclass
class JobStats:
    """What :func:`run_jobs` did, with the time of each step (seconds), for the benchmark."""

    signed: int = 0
    chunks: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("claim", "load", "decide", "sign", "write", "commit"), 0.0)
    )


class _Laps:
    """Adds the time since the previous lap to a named step of :class:`JobStats`."""

    def __init__(self, stats: JobStats) -> None:
        self.stats = stats
        self.last = time.perf_counter()

    def lap(self, step: str) -> None:
        moment = time.perf_counter()
        self.stats.seconds[step] += moment - self.last
        self.last = moment


def _device_filters(selector: Selector | None) -> list[Any]:
    filters: list[Any] = [Device.state == AdmissionState.ACCEPTED.value]
    if selector is not None:
        filters.append(Device.hardware_profile == selector.profile)
        if selector.group is not None:
            filters.append(Device.group == selector.group)
    return filters


def _job_selector(session: Session, job: AssignmentJob) -> tuple[Rollout | None, Selector | None]:
    rollout = session.get(Rollout, job.rollout_id) if job.rollout_id else None
    return rollout, (Selector.from_dict(rollout.selector) if rollout is not None else None)


def _open_jobs(sessions: sessionmaker[Session]) -> Iterator[int]:
    after = 0
    while True:
        with sessions() as session:
            job_id = session.scalar(
                select(AssignmentJob.id)
                .where(AssignmentJob.done_at.is_(None), AssignmentJob.id > after)
                .order_by(AssignmentJob.id)
                .limit(1)
            )
        if job_id is None:
            return
        yield job_id
        after = job_id


def _prepare(sessions: sessionmaker[Session], job_id: int, chunk: int) -> bool:
    """Split a new job into slices (once), or close it when a newer job covers it. False: nothing to do."""
    with transaction(sessions) as session:
        job = session.scalar(select(AssignmentJob).where(AssignmentJob.id == job_id).with_for_update())
        if job is None or job.done_at is not None:
            return False
        newer = select(AssignmentJob.id).where(AssignmentJob.id > job.id)
        if job.rollout_id is not None:
            newer = newer.where(
                AssignmentJob.rollout_id.is_(None) | (AssignmentJob.rollout_id == job.rollout_id)
            )
        else:
            newer = newer.where(AssignmentJob.rollout_id.is_(None))
        if session.scalar(newer.limit(1)) is not None:
            job.done_at = datetime.now(UTC)  # superseded: the newer job signs the same devices later
            return False
        if (
            session.scalar(
                select(AssignmentJobSlice.slice).where(AssignmentJobSlice.job_id == job_id).limit(1)
            )
            is not None
        ):
            return True
        job.fleet = read_counter(session, FLEET)
        _rollout, selector = _job_selector(session, job)
        filters = _device_filters(selector)
        total = int(session.scalar(select(func.count()).select_from(Device).where(*filters)) or 0)
        step = max(-(-total // SLICES), chunk)
        numbered = (
            select(Device.id, func.row_number().over(order_by=Device.id).label("rn"))
            .where(*filters)
            .subquery()
        )
        bounds: list[str | None] = list(
            session.scalars(select(numbered.c.id).where(numbered.c.rn % step == 0).order_by(numbered.c.id))
        )
        if not bounds or bounds[-1] is not None:
            bounds.append(None)
        start = ""
        for index, until in enumerate(bounds):
            session.add(AssignmentJobSlice(job_id=job_id, slice=index, cursor=start, until=until))
            start = until or ""
        return True


def _releases(session: Session, ids: Iterable[str | None]) -> dict[str, Release]:
    wanted = {i for i in ids if i}
    return {r.id: r for r in session.scalars(select(Release).where(Release.id.in_(wanted)))} if wanted else {}


def _work_chunk(ctx: ServerContext, job_id: int, stats: JobStats, chunk: int, now: float | None) -> bool:
    """Sign and store the next chunk of one free slice of a job. False: no free slice left."""
    laps = _Laps(stats)
    with transaction(ctx.sessions) as session:
        part = session.scalar(
            select(AssignmentJobSlice)
            .where(AssignmentJobSlice.job_id == job_id, AssignmentJobSlice.done.is_(False))
            .order_by(AssignmentJobSlice.slice)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if part is None:
            return False
        # The counter first: a decision read after it is at least as new as the counter it carries.
        generation, fleet = read_counter(session), read_counter(session, FLEET)
        job = session.get(AssignmentJob, job_id)
        assert job is not None  # the slice's foreign key holds it
        target, selector = _job_selector(session, job)
        rollouts = list(
            session.scalars(select(Rollout).order_by(Rollout.created_at.desc(), Rollout.id.desc()))
        )
        releases = _releases(
            session, [r.release_id for r in rollouts] + [r.previous_release_id for r in rollouts]
        )
        moment = now if now is not None else time.time()
        laps.lap("claim")
        query = (
            select(Device)
            .options(
                load_only(
                    Device.id, Device.hardware_profile, Device.group, Device.tags, Device.current_sha256
                )
            )
            .where(*_device_filters(selector), Device.id > part.cursor)
            .order_by(Device.id)
            .limit(chunk)
        )
        if part.until is not None:
            query = query.where(Device.id <= part.until)
        devices = list(session.scalars(query))
        ids = [device.id for device in devices]
        # Lock the chunk's devices; one a poll is signing right now (it holds the row) is left to it.
        locked = set(
            session.scalars(select(Device.id).where(Device.id.in_(ids)).with_for_update(skip_locked=True))
        )
        # Rows signed since the change (at poll time, or by an earlier run of this job) are kept.
        fresh = {
            (device_id, key)
            for device_id, key, signed_at, refresh_at in session.execute(
                select(
                    SignedAssignment.device_id,
                    SignedAssignment.current_key,
                    SignedAssignment.generation,
                    SignedAssignment.refresh_at,
                ).where(SignedAssignment.device_id.in_(ids))
            ).tuples()
            if signed_at >= job.generation and moment < refresh_at
        }
        laps.lap("load")
        percent = 0.0
        if target is not None:
            percent = (
                100.0
                if target.state == RolloutState.COMPLETED.value
                else float(target.phases[target.phase_index]["percent"])
            )
        deltas: dict[tuple[str, str], Delta | None] = {}
        decided = []
        matched = cohort = 0
        for device in devices:
            if selector is not None and not selector.matches(device):
                continue
            matched += 1
            if target is not None and in_cohort(device.id, target.id, percent):
                cohort += 1
            if device.id not in locked or (device.id, device.current_sha256 or "") in fresh:
                continue
            chosen, rollout, rollback = choose_release(rollouts, device)
            release = releases.get(chosen) if chosen else None
            delta = None
            current = device.current_sha256
            if release is not None and current and current != release.sha256:
                pair = (current, release.sha256)
                if pair not in deltas:
                    deltas[pair] = session.scalar(
                        select(Delta).where(Delta.base_sha256 == pair[0], Delta.result_sha256 == pair[1])
                    )
                delta = deltas[pair]
            decided.append((device, release, rollout.id if rollout else None, rollback, delta))
        laps.lap("decide")
        signer = ctx.keyring.signer("director")
        rows = [
            _row_of(
                device.id,
                device.current_sha256 or "",
                sign_answer(
                    device_id=device.id,
                    hardware_profile=device.hardware_profile,
                    generation=generation,
                    release=release,
                    rollout_id=rollout_id,
                    rollback=rollback,
                    delta=delta,
                    signer=signer,
                    config=ctx.director,
                    now=moment,
                ),
            )
            for device, release, rollout_id, rollback, delta in decided
        ]
        laps.lap("sign")
        store_rows(session, rows)
        if ids:
            part.cursor = ids[-1]
        part.done = len(ids) < chunk
        part.signed += len(rows)
        part.matched += matched
        part.cohort += cohort
        part.consistent = part.consistent and generation == job.generation and fleet == job.fleet
        session.flush()
        laps.lap("write")
    laps.lap("commit")
    stats.signed += len(rows)
    stats.chunks += 1
    ctx.metrics.assignments_signed += len(rows)
    return True


def _finish(sessions: sessionmaker[Session], job_id: int) -> bool:
    """Close a job whose slices are all done; record its cohort count on the rollout. True: closed."""
    with transaction(sessions) as session:
        job = session.scalar(select(AssignmentJob).where(AssignmentJob.id == job_id).with_for_update())
        if job is None or job.done_at is not None:
            return False
        parts = list(session.scalars(select(AssignmentJobSlice).where(AssignmentJobSlice.job_id == job_id)))
        if not parts or not all(p.done for p in parts):
            return False
        job.done_at = datetime.now(UTC)
        if job.rollout_id is not None and all(p.consistent for p in parts):
            matched = sum(p.matched for p in parts)
            session.execute(
                update(Rollout)
                .where(Rollout.id == job.rollout_id, Rollout.changed_generation == job.generation)
                .values(
                    cohort_count=sum(p.cohort for p in parts) if matched else -1,
                    cohort_stamp=job.generation,
                    cohort_fleet=job.fleet,
                )
            )
        return True


def run_jobs(
    ctx: ServerContext, *, chunk: int = CHUNK, max_chunks: int | None = None, now: float | None = None
) -> JobStats:
    """Work on every open bulk job until none has a free slice left (the background task of each worker).

    Args:
        ctx: The server context.
        chunk: Devices per transaction.
        max_chunks: Stop after this many chunks (tests: a worker "killed" mid-job).
        now: Unix time for the signatures (tests).

    Returns:
        What was done.
    """
    stats = JobStats()
    for job_id in _open_jobs(ctx.sessions):
        if not _prepare(ctx.sessions, job_id, chunk):
            continue
        while max_chunks is None or stats.chunks < max_chunks:
            if not _work_chunk(ctx, job_id, stats, chunk, now):
                break
        else:
            return stats
        if _finish(ctx.sessions, job_id):
            log.info("assignment job %s done", job_id)
    return stats


def pending_jobs(session: Session) -> int:
    """Return how many bulk jobs are still open."""
    return int(
        session.scalar(select(func.count()).select_from(AssignmentJob).where(AssignmentJob.done_at.is_(None)))
        or 0
    )
