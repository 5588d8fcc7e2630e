"""The demo's summary: what it collected from the OTA server and MLflow, as JSON and as rich tables.

``pipelines.demo`` fills a :class:`DemoSummary` at the end of ``make run``; :func:`print_summary` renders it
(the rollout timelines through ``ota.server.status_cli``, the device trace through ``registry.trace``).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from ml.files import write_atomic
from ota.client.api import OperatorClient
from ota.edge.fleet import FleetSummary
from ota.server.status_cli import RolloutReport, render_report, rollout_report
from ota.server.testing import ServerProcess
from pipelines.paths import default_tracking_uri
from registry.fetch import version_facts
from registry.store import client_for, version_metrics
from registry.trace import TraceChain, render_trace, trace_device


@dataclass
class RolloutRun:
    """One rollout the demo drove, with what the fleet and the server said about it."""

    label: str
    version: str
    rollout_id: str
    fleet: FleetSummary
    report: RolloutReport | None = None


@dataclass
class DemoSummary:
    """Everything the demo's closing summary prints, read back from the stores."""

    model_name: str
    profile: str
    versions: dict[str, str] = field(default_factory=dict)  # label → MLflow version
    rollouts: list[RolloutRun] = field(default_factory=list)
    device_versions: dict[str, str] = field(default_factory=dict)  # device → MLflow version (server view)
    trace: TraceChain | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, dict[str, str]] = field(default_factory=dict)  # label → facts read from MLflow
    server_home: Path = Path()

    def per_version(self) -> Counter[str]:
        """How many devices run each version, per the OTA server."""
        return Counter(self.device_versions.values())

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-able data (written to ``$EDGEFLEET_HOME/demo/summary.json``)."""
        return {
            "model_name": self.model_name,
            "profile": self.profile,
            "versions": self.versions,
            "aliases": self.aliases,
            "lineage": self.lineage,
            "devices_per_version": dict(self.per_version()),
            "device_versions": self.device_versions,
            "rollouts": [
                {
                    "label": run.label,
                    "version": run.version,
                    "rollout_id": run.rollout_id,
                    "fleet": run.fleet.totals(),
                    "report": None if run.report is None else run.report.to_json(),
                }
                for run in self.rollouts
            ],
            "trace": None if self.trace is None else self.trace.as_dict(),
            "server_home": str(self.server_home),
        }


def print_summary(summary: DemoSummary, *, elapsed_s: float, console: Console) -> None:
    """Print the closing summary: versions per device, timelines, bytes, the abort, one trace."""
    console.print(Rule(f"EdgeFleet demo summary ({elapsed_s / 60:.1f} min)"))
    console.print(f"model {summary.model_name}: versions {summary.versions}; aliases now {summary.aliases}")
    versions = Table(
        "label",
        "version",
        "variant",
        "test accuracy",
        "bytes",
        "fine-tuned from",
        "data fingerprint",
        title="Versions (MLflow registry)",
    )
    for label, facts in summary.lineage.items():
        versions.add_row(
            label,
            facts["version"],
            facts["variant"],
            facts["accuracy"],
            facts["size_bytes"],
            facts["init_from"] or "— (from scratch)",
            facts["data_fingerprint"][:12] + "…",
        )
    console.print(versions)
    per_version = Table("MLflow version", "devices", title="Versions per device (OTA server)")
    for version, count in sorted(summary.per_version().items()):
        per_version.add_row(version, str(count))
    console.print(per_version)
    bytes_table = Table(
        "rollout",
        "version",
        "state",
        "delta installs",
        "full installs",
        "bytes downloaded",
        "full-only bytes",
        "saved",
        title="Bytes as delta vs full (server status reports)",
    )
    for run in summary.rollouts:
        report = run.report
        if report is None:
            continue
        downloaded = report.delta_bytes + report.full_bytes
        bytes_table.add_row(
            run.label,
            run.version,
            report.state,
            str(report.delta_installs),
            str(report.full_installs),
            f"{downloaded:,}",
            f"{report.full_equivalent_bytes:,}",
            f"{report.saved_fraction:.1%}",  # the server's figure: ota.core.savings.bytes_saved
        )
    console.print(bytes_table)
    for run in summary.rollouts:
        if run.report is not None:
            console.print(Rule(f"rollout timeline: {run.label} (version {run.version})", style="dim"))
            console.print(render_report(run.report))
    aborted = [
        r for r in summary.rollouts if r.report is not None and r.report.state in {"aborted", "rolled-back"}
    ]
    for run in aborted:
        assert run.report is not None
        console.print(
            f"[red]abort event[/red]: rollout {run.rollout_id} of version {run.version}: {run.report.reason}"
        )
    if summary.trace is not None:
        console.print(Rule("trace of one device", style="dim"))
        for line in render_trace(summary.trace):
            console.print(line, highlight=False, markup=False)
    console.print(
        f"inspect: EDGEFLEET_HOME={summary.server_home} edgefleet rollout status; "
        f"edgefleet models list {summary.model_name}"
    )
    from pipelines.summary import ui_commands

    for line in ui_commands(default_tracking_uri()):
        console.print(line, highlight=False)


def collect(summary: DemoSummary, server: ServerProcess, *, tracking_uri: str) -> None:
    """Fill the summary from the stores: devices' versions, rollout reports, a trace, the aliases.

    Raises:
        ClientError: The server refused (ota.client.errors).
        TraceError: The traced device's chain is broken.
    """
    from ota.server.context import build_context
    from ota.server.settings import load_settings

    with OperatorClient(base_url=server.url, token=server.operator_token) as api:
        version_of_sha = {r.sha256: r.version for r in api.releases()}
        devices = api.devices()
        summary.device_versions = {d.id: version_of_sha.get(d.current_sha256 or "", "-") for d in devices}
        if devices:
            summary.trace = trace_device(devices[0].id, api=api, tracking_uri=tracking_uri)
    ctx = build_context(load_settings(home=server.home))
    try:
        with ctx.sessions() as session:
            for run in summary.rollouts:
                run.report = rollout_report(session, run.rollout_id)
    finally:
        ctx.close()
    from registry.store import model_aliases

    client = client_for(tracking_uri)
    summary.aliases = model_aliases(client, summary.model_name)
    for label, version in summary.versions.items():
        facts = version_facts(summary.model_name, version, tracking_uri=tracking_uri)
        metrics = version_metrics(client.get_model_version(summary.model_name, version))
        summary.lineage[label] = {
            "version": version,
            "variant": facts.tags.get("edgefleet.variant", "-"),
            "init_from": facts.lineage.get("init_from", ""),
            "data_fingerprint": facts.data_fingerprint,
            "accuracy": f"{metrics.get('accuracy', float('nan')):.4f}",
            "size_bytes": f"{metrics.get('size_bytes', float('nan')):.0f}",
        }


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write ``data`` as JSON atomically (temp file, fsync, rename)."""
    write_atomic(path, json.dumps(data, indent=1, default=str).encode())
