"""The data behind ``edgefleet rollout status``: phases, device counts per status, failure rate against the
abort threshold, bytes served as delta vs full (and what that saved) and the rollout's timeline.

Served at ``GET /v1/rollouts/{id}/report`` (``ota.server.routes.operators``); the command reads it through
the operator API (``ota.client``) and renders it with ``ota.client.render.render_report`` (re-exported here
for the demo's summary). :func:`rollout_report` is plain data, so the demo's summary and the tests read the
same figures the command prints. Bytes saved come from ``ota.core.savings.bytes_saved``, the one
definition every report uses.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Targets

from ota.client.render import FINAL_STATES, render_report
from ota.core.manifest import ReportStatus
from ota.core.rollout_report import RolloutReport, TimelineEvent
from ota.core.savings import bytes_saved
from ota.server.errors import NotFoundError
from ota.server.models import AuditEntry, Delta, Release, Rollout, RolloutDevice, StatusReportRow
from ota.server.rollouts import counters
from ota.server.tuf_repo import ImageRepository

__all__ = ["FINAL_STATES", "RolloutReport", "TimelineEvent", "render_report", "rollout_ids", "rollout_report"]


def _selftest_length(session: Session, release: Release | None) -> int:
    """Length of the release's self-test vectors target, as the signed targets metadata declares it."""
    if release is None or release.selftest_target is None:
        return 0
    data = ImageRepository.read(session, "targets")
    if data is None:
        return 0
    signed = Metadata[Targets].from_bytes(data).signed
    target = signed.targets.get(release.selftest_target)
    return target.length if target is not None else 0


def rollout_report(session: Session, rollout_id: str) -> RolloutReport:
    """Read one rollout's state, counts, bytes and timeline from the database.

    Raises:
        NotFoundError: Unknown rollout.
    """
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"no rollout {rollout_id!r}")
    release = session.get(Release, rollout.release_id)
    counts = counters(session, rollout_id)
    statuses = Counter(
        session.scalars(select(RolloutDevice.status).where(RolloutDevice.rollout_id == rollout_id))
    )
    delta_bytes = full_bytes = delta_installs = full_installs = 0
    downloaded = session.scalars(
        select(StatusReportRow).where(
            StatusReportRow.rollout_id == rollout_id, StatusReportRow.status == ReportStatus.DOWNLOADED.value
        )
    )
    for row in downloaded:
        body = row.body or {}
        used_delta = bool((body.get("details") or {}).get("delta"))
        size = int(body.get("bytes_downloaded") or 0)
        if used_delta:
            delta_bytes += size
            delta_installs += 1
        else:
            full_bytes += size
            full_installs += 1
    length = release.length if release is not None else 0
    vectors = _selftest_length(session, release)
    deltas = len(list(session.scalars(select(Delta.id).where(Delta.release_id == rollout.release_id))))
    timeline = [
        TimelineEvent(
            at=entry.at.isoformat(timespec="seconds"),
            actor=entry.actor,
            action=entry.action,
            state=(entry.details or {}).get("state"),
            phase=(entry.details or {}).get("phase"),
            reason=(entry.details or {}).get("reason"),
        )
        for entry in session.scalars(
            select(AuditEntry).where(AuditEntry.subject == rollout_id).order_by(AuditEntry.id)
        )
    ]
    full_equivalent = (delta_installs + full_installs) * (length + vectors)
    savings = bytes_saved(delta_bytes + full_bytes, full_equivalent)
    return RolloutReport(
        id=rollout.id,
        release_id=rollout.release_id,
        model=release.model if release is not None else "?",
        version=release.version if release is not None else "?",
        previous_release_id=rollout.previous_release_id,
        state=rollout.state,
        reason=rollout.reason,
        phases=[float(p["percent"]) for p in rollout.phases],
        phase_index=rollout.phase_index,
        statuses=dict(sorted(statuses.items())),
        succeeded=counts.succeeded,
        failed=counts.failed,
        in_progress=counts.in_progress,
        failure_rate=counts.failure_rate,
        failure_threshold=rollout.failure_threshold,
        min_reports_for_abort=rollout.min_reports_for_abort,
        delta_bytes=delta_bytes,
        full_bytes=full_bytes,
        full_equivalent_bytes=full_equivalent,
        delta_installs=delta_installs,
        full_installs=full_installs,
        artifact_bytes=length,
        selftest_bytes=vectors,
        deltas_published=deltas,
        saved_bytes=savings.saved_bytes,
        saved_fraction=savings.saved_fraction,
        overhead_bytes=savings.overhead_bytes,
        timeline=timeline,
    )


def rollout_ids(session: Session) -> list[str]:
    """Every rollout id, oldest first."""
    return list(session.scalars(select(Rollout.id).order_by(Rollout.created_at)))
