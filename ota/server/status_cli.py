"""``edgefleet rollout status [ID] [--watch]``: phases, device counts per status, failure rate against the
abort threshold, bytes served as delta vs full, and the rollout's timeline from the audit log.

Mounted by ``ota/cli.py`` in place of ``ota.server.cli``'s older table-only ``status``. It reads the
server's own database, like the other operator commands in ``ota.server.cli`` (the HTTP API exposes neither
the threshold nor the per-report byte counts). :func:`rollout_report` is plain data, so the demo's summary
and the tests read the same figures the command prints.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Targets

from ota.core.manifest import ReportStatus
from ota.server.errors import NotFoundError, ServerError
from ota.server.models import AuditEntry, Delta, Release, Rollout, RolloutDevice, StatusReportRow
from ota.server.rollouts import counters
from ota.server.tuf_repo import ImageRepository

console = Console()
FINAL_STATES = frozenset({"completed", "aborted", "rolled-back"})


@dataclass(frozen=True)
class TimelineEvent:
    """One audit-log entry about a rollout."""

    at: str
    actor: str
    action: str
    state: str | None
    phase: int | None
    reason: str | None


@dataclass(frozen=True)
class RolloutReport:
    """Everything ``rollout status`` shows about one rollout.

    Attributes:
        delta_bytes: Bytes devices downloaded for installs made from a delta patch.
        full_bytes: Bytes devices downloaded for installs of the whole artifact.
        full_equivalent_bytes: What every download would have cost without deltas: the full artifact
            plus its self-test vectors (which every install downloads either way).
        delta_installs: Downloads completed from a delta.
        full_installs: Downloads completed as a full artifact.
    """

    id: str
    release_id: str
    model: str
    version: str
    previous_release_id: str | None
    state: str
    reason: str | None
    phases: list[float]
    phase_index: int
    statuses: dict[str, int]
    succeeded: int
    failed: int
    in_progress: int
    failure_rate: float
    failure_threshold: float
    min_reports_for_abort: int
    delta_bytes: int
    full_bytes: int
    full_equivalent_bytes: int
    delta_installs: int
    full_installs: int
    artifact_bytes: int
    selftest_bytes: int
    deltas_published: int
    timeline: list[TimelineEvent] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


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
        full_equivalent_bytes=(delta_installs + full_installs) * (length + vectors),
        delta_installs=delta_installs,
        full_installs=full_installs,
        artifact_bytes=length,
        selftest_bytes=vectors,
        deltas_published=deltas,
        timeline=timeline,
    )


def rollout_ids(session: Session) -> list[str]:
    """Every rollout id, oldest first."""
    return list(session.scalars(select(Rollout.id).order_by(Rollout.created_at)))


def render_report(report: RolloutReport) -> Group:
    """A rich renderable of one rollout (phases, statuses, failure rate, bytes, timeline)."""
    phases = "  ".join(
        f"[bold]{p:g}%[/bold]" if i == report.phase_index else f"{p:g}%" for i, p in enumerate(report.phases)
    )
    over = report.failure_rate > report.failure_threshold
    rate = f"[{'red' if over else 'green'}]{report.failure_rate:.1%}[/]"
    head = Table.grid(padding=(0, 2))
    head.add_row("rollout", f"{report.id}  {report.model} v{report.version}  ({report.release_id})")
    head.add_row("state", f"{report.state}" + (f"  — {report.reason}" if report.reason else ""))
    head.add_row("phases", phases)
    head.add_row(
        "outcomes",
        f"{report.succeeded} succeeded, {report.failed} failed, {report.in_progress} in progress; "
        "failure rate "
        f"{rate} vs threshold {report.failure_threshold:.1%} (after {report.min_reports_for_abort} reports)",
    )
    saved = (
        1 - (report.delta_bytes + report.full_bytes) / report.full_equivalent_bytes
        if report.full_equivalent_bytes
        else 0.0
    )
    head.add_row(
        "bytes",
        f"delta {report.delta_bytes:,} B over {report.delta_installs} install(s), "
        f"full {report.full_bytes:,} B over "
        f"{report.full_installs}; full-only would be {report.full_equivalent_bytes:,} B (saved {saved:.1%})",
    )
    statuses = Table("status", "devices", title=None, box=None)
    for status, count in report.statuses.items():
        statuses.add_row(status, str(count))
    timeline = Table("at (UTC)", "actor", "action", "state", "phase", "reason", box=None)
    for event in report.timeline:
        timeline.add_row(
            event.at[11:19],  # the time of day; the date is the rollout's
            event.actor,
            event.action,
            event.state or "",
            "" if event.phase is None else str(event.phase),
            event.reason or "",
        )
    return Group(head, statuses, timeline)


def _reports(rollout_id: str | None) -> list[RolloutReport]:
    from ota.server.context import build_context
    from ota.server.settings import load_settings

    ctx = build_context(load_settings())
    try:
        with ctx.sessions() as session:
            ids = [rollout_id] if rollout_id else rollout_ids(session)
            return [rollout_report(session, i) for i in ids]
    finally:
        ctx.close()


def status(
    rollout_id: Annotated[str | None, typer.Argument(help="Rollout id (default: every rollout).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until the rollout ends.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Refresh period of --watch, seconds.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show phases, device counts per status, failure rate vs threshold, delta vs full bytes and timeline."""
    try:
        reports = _reports(rollout_id)
        if as_json:
            typer.echo(json.dumps([r.to_json() for r in reports], indent=1))
            return
        if not watch:
            for report in reports:
                console.print(render_report(report))
            return
        with Live(Group(*(render_report(r) for r in reports)), console=console, refresh_per_second=4) as live:
            while not all(r.state in FINAL_STATES for r in reports):
                time.sleep(interval)
                reports = _reports(rollout_id)
                live.update(Group(*(render_report(r) for r in reports)))
    except ServerError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
