"""Rich renderings of the operator API's answers: the ``rollout status`` view.

Duck-typed on the fields both report types share (``ota.client.models.RolloutReport`` from the API and
``ota.server.status_cli.RolloutReport`` from the database, which the demo's summary prints), so there is
one rendering of a rollout. The bytes-saved figure is the report's own (``ota.core.savings.bytes_saved``),
never recomputed here.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

FINAL_STATES = frozenset({"completed", "aborted", "rolled-back"})


def render_report(report: Any) -> Group:
    """A rich renderable of one rollout report (phases, statuses, failure rate, bytes, timeline)."""
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
    overhead = (
        f"; {report.overhead_bytes:,} B over full-only (retries, resumes, fallbacks)"
        if report.overhead_bytes
        else ""
    )
    head.add_row(
        "bytes",
        f"delta {report.delta_bytes:,} B over {report.delta_installs} install(s), "
        f"full {report.full_bytes:,} B over {report.full_installs}; full-only would be "
        f"{report.full_equivalent_bytes:,} B (saved {report.saved_bytes:,} B, {report.saved_fraction:.1%})"
        + overhead,
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
