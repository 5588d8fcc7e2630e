"""The director: per-device signed assignments, and the cache that keeps the poll hot path cheap.

An assignment is computed (one read transaction) and signed once per device, reported current hash and
generation; afterwards polls are answered from memory: a 304 when ``If-None-Match`` matches, else the
cached signed bytes. Any change that can alter an answer (release, rollout, device) bumps the shared
``generation`` counter row in the same transaction; every process polls that row in the background
(``cache_refresh_interval``) and drops entries older than it, so invalidation works across processes.

Answers are deterministic across processes: Ed25519 signatures are deterministic, and ``expires`` is
aligned to a time bucket, so two processes signing the same decision produce the same bytes and ETag.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from securesystemslib.signer import Signer
from sqlalchemy import select
from sqlalchemy.orm import Session

from ota.core.manifest import AdmissionState, Assignment, DeltaRef, TargetRef, format_time, sign_assignment
from ota.core.signing import canonical_json
from ota.server.db import read_counter
from ota.server.errors import ForbiddenError, NotFoundError
from ota.server.models import Delta, Device, Release, Rollout
from ota.server.rollout_machine import REVERTED_STATES, RolloutState, in_cohort
from ota.server.rollouts import Selector

MAX_CACHE_ENTRIES = 1_000_000


@dataclass(frozen=True)
class CachedAnswer:
    """A signed assignment ready to send.

    Attributes:
        body: The signed envelope's JSON bytes.
        etag: The quoted ETag (hash of the decision and its expiry, not of the counter).
        generation: The generation it was computed at.
        refresh_at: Unix time after which it must be re-signed (half the expiry period).
        poll_interval: Seconds, as a header value.
    """

    body: bytes
    etag: bytes
    generation: int
    refresh_at: float
    poll_interval: bytes


@dataclass
class DirectorConfig:
    """Knobs of the director."""

    poll_interval: int = 60
    poll_jitter: int = 15
    assignment_expiry: int = 86400


def _jittered_interval(device_id: str, config: DirectorConfig) -> int:
    # A fixed per-device offset spreads a fleet's polls even when every device boots at once.
    if config.poll_jitter == 0:
        return config.poll_interval
    offset = int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:4], "big") % (config.poll_jitter + 1)
    return config.poll_interval + offset


def release_seq(release: Release) -> int:
    """Return the release's sequence for assignments: its creation time in microseconds since the epoch.

    Releases are created one after another, so this only grows with each new release of a model, and it
    is the same in every server process (it is read from the shared database, not computed per process).

    Args:
        release: The release row.

    Returns:
        The sequence number.
    """
    created = release.created_at
    if created.tzinfo is None:  # SQLite returns naive datetimes (stored as UTC)
        created = created.replace(tzinfo=UTC)
    return int(created.timestamp() * 1_000_000)


def decide_release(session: Session, device: Device) -> tuple[Release | None, Rollout | None, bool]:
    """Return the release a device should run, the rollout that decided it, and whether it is a rollback.

    The newest rollout whose selector matches the device decides: in its cohort the device gets the
    rollout's release, outside it (or once the rollout aborted or rolled back) the previous release.
    Once the rollout aborted or was rolled back, sending the previous release is an operator (or automatic)
    rollback: the assignment carries the rollback flag so agents that installed the newer release accept it.

    Args:
        session: An open session.
        device: The device.

    Returns:
        ``(release or None, rollout or None, rollback)``.
    """
    rollouts = session.scalars(select(Rollout).order_by(Rollout.created_at.desc(), Rollout.id.desc()))
    chosen, rollout, rollback = choose_release(rollouts, device)
    return (session.get(Release, chosen) if chosen else None), rollout, rollback


def choose_release(rollouts: Iterable[Rollout], device: Device) -> tuple[str | None, Rollout | None, bool]:
    """The decision of :func:`decide_release` from rollouts given newest first (bulk jobs preload them).

    Returns:
        ``(release id or None, rollout or None, rollback)``.
    """
    for rollout in rollouts:
        if not Selector.from_dict(rollout.selector).matches(device):
            continue
        state = RolloutState(rollout.state)
        percent = float(rollout.phases[rollout.phase_index]["percent"])
        if state is RolloutState.COMPLETED:
            percent = 100.0
        chosen: str | None
        reverted = state in REVERTED_STATES
        if reverted or not in_cohort(device.id, rollout.id, percent):
            chosen = rollout.previous_release_id
        else:
            chosen = rollout.release_id
        rollback = reverted and chosen is not None and chosen != rollout.release_id
        return chosen, rollout, rollback
    return None, None, False


def build_answer(
    session: Session,
    *,
    device_id: str,
    current_sha256: str | None,
    signer: Signer,
    config: DirectorConfig,
    now: float | None = None,
) -> CachedAnswer:
    """Compute and sign a device's assignment.

    Args:
        session: An open session (read only).
        device_id: The device.
        current_sha256: The model hash the device reports running (selects a delta).
        signer: The director key.
        config: Director settings.
        now: Unix time (tests).

    Returns:
        The cached answer.

    Raises:
        NotFoundError: Unknown device.
        ForbiddenError: The device is not accepted.
    """
    generation = read_counter(session)
    device = session.get(Device, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    if device.state != AdmissionState.ACCEPTED.value:
        raise ForbiddenError(f"device {device_id} is {device.state}, not accepted")
    release, rollout, rollback = decide_release(session, device)
    delta = None
    if release is not None and current_sha256 and current_sha256 != release.sha256:
        delta = session.scalar(
            select(Delta).where(Delta.base_sha256 == current_sha256, Delta.result_sha256 == release.sha256)
        )
    return sign_answer(
        device_id=device_id,
        hardware_profile=device.hardware_profile,
        generation=generation,
        release=release,
        rollout_id=rollout.id if rollout else None,
        rollback=rollback,
        delta=delta,
        signer=signer,
        config=config,
        now=now if now is not None else time.time(),
    )


def sign_answer(
    *,
    device_id: str,
    hardware_profile: str,
    generation: int,
    release: Release | None,
    rollout_id: str | None,
    rollback: bool,
    delta: Delta | None,
    signer: Signer,
    config: DirectorConfig,
    now: float,
) -> CachedAnswer:
    """Build and sign one assignment from a decision (the one code path of poll-time and bulk signing).

    Args:
        device_id: The device.
        hardware_profile: Its profile.
        generation: The generation counter read before the decision was made (the assignment's counter).
        release: The chosen release (None: nothing to run).
        rollout_id: The deciding rollout.
        rollback: Whether the release is sent as a rollback.
        delta: The patch from the device's current model to ``release`` (None: full download).
        signer: The director key.
        config: Director settings.
        now: Unix time.

    Returns:
        The answer.
    """
    target = delta_ref = None
    if release is not None:
        target = TargetRef(name=release.target_name, length=release.length, sha256=release.sha256)
        if delta is not None:
            delta_ref = DeltaRef(
                name=delta.target_name,
                length=delta.length,
                sha256=delta.sha256,
                base_sha256=delta.base_sha256,
                result_sha256=delta.result_sha256,
            )
    half = max(config.assignment_expiry // 2, 1)
    bucket_start = int(now // half) * half
    expires = datetime.fromtimestamp(bucket_start + config.assignment_expiry, UTC)
    interval = _jittered_interval(device_id, config)
    assignment = Assignment(
        device_id=device_id,
        hardware_profile=hardware_profile,
        counter=generation,
        expires=format_time(expires),
        poll_interval=interval,
        poll_jitter=config.poll_jitter,
        target=target,
        delta=delta_ref,
        release_id=release.id if release else None,
        rollout_id=rollout_id,
        release_seq=release_seq(release) if release else None,
        rollback=rollback and release is not None,
    )
    decision = assignment.to_dict()
    decision.pop("counter")
    etag = hashlib.sha256(canonical_json(decision)).hexdigest()[:32]
    envelope = sign_assignment(assignment, signer)
    return CachedAnswer(
        body=canonical_json(envelope),
        etag=f'"{etag}"'.encode(),
        generation=generation,
        refresh_at=bucket_start + half,
        poll_interval=str(interval).encode(),
    )


class AssignmentCache:
    """Signed answers by ``(device id, current hash)``, valid while their generation is current."""

    def __init__(self, max_entries: int = MAX_CACHE_ENTRIES) -> None:
        """Create an empty cache.

        Args:
            max_entries: Size bound; the cache is cleared when it is reached (simple and bounded).
        """
        self.generation = 0
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], CachedAnswer] = {}

    def get(self, device_id: str, current: str, now: float) -> CachedAnswer | None:
        """Return a still-valid answer, or None (hot path: two dict/attribute reads and a comparison)."""
        entry = self._entries.get((device_id, current))
        if entry is None or entry.generation < self.generation or now >= entry.refresh_at:
            return None
        return entry

    def put(self, device_id: str, current: str, answer: CachedAnswer) -> None:
        """Store an answer (and raise the known generation if the answer saw a newer one)."""
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[(device_id, current)] = answer
        self.observe(answer.generation)

    def observe(self, generation: int) -> None:
        """Record the newest generation seen (from the background poll or a local write)."""
        if generation > self.generation:
            self.generation = generation
            # Old entries are filtered lazily by ``get``; drop them in bulk when the cache is large.
            if len(self._entries) > self.max_entries // 2:
                self._entries.clear()

    def __len__(self) -> int:
        """Return the number of cached answers."""
        return len(self._entries)
