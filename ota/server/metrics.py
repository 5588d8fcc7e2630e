"""Prometheus metrics of the OTA server, kept as plain integers so the poll hot path pays no locking.

A custom collector turns them into Prometheus families when ``/metrics`` is scraped (prometheus_client
renders the text format). Counters are per process, like any Prometheus client in a multi-worker server.
"""

from __future__ import annotations

from collections import Counter as TallyCounter
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


class Metrics:
    """Plain counters updated by the server; read by :class:`MetricsCollector`."""

    def __init__(self) -> None:
        """Start every counter at zero."""
        self.polls_200 = 0
        self.polls_304 = 0
        self.polls_cached = 0
        # Assignments this process signed (at poll time and in bulk jobs), and ones it served from the
        # shared table that another process (or an earlier bulk job) signed.
        self.assignments_signed = 0
        self.assignments_shared = 0
        self.reports: TallyCounter[str] = TallyCounter()
        self.rollout_phases: Callable[[], dict[str, tuple[int, float, str]]] = dict


class MetricsCollector(Collector):
    """Exposes :class:`Metrics` as Prometheus metric families."""

    def __init__(self, metrics: Metrics) -> None:
        """Wrap the counters.

        Args:
            metrics: The counters.
        """
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Yield the families."""
        m = self.metrics
        polls = CounterMetricFamily("edgefleet_polls", "Assignment polls answered", labels=["code"])
        polls.add_metric(["200"], m.polls_200)
        polls.add_metric(["304"], m.polls_304)
        yield polls
        total = m.polls_200 + m.polls_304
        ratio = GaugeMetricFamily("edgefleet_polls_304_ratio", "Share of polls answered 304")
        ratio.add_metric([], m.polls_304 / total if total else 0.0)
        yield ratio
        cached = CounterMetricFamily("edgefleet_polls_cached", "Polls answered from the cache")
        cached.add_metric([], m.polls_cached)
        yield cached
        signed = CounterMetricFamily("edgefleet_assignments_signed", "Assignments signed by this process")
        signed.add_metric([], m.assignments_signed)
        yield signed
        shared = CounterMetricFamily(
            "edgefleet_assignments_shared", "Assignments served from the shared table without signing"
        )
        shared.add_metric([], m.assignments_shared)
        yield shared
        reports = CounterMetricFamily("edgefleet_reports", "Status reports accepted", labels=["status"])
        for status, count in sorted(m.reports.items()):
            reports.add_metric([status], count)
        yield reports
        phase = GaugeMetricFamily(
            "edgefleet_rollout_phase_percent",
            "Current phase percentage of rollouts",
            labels=["rollout", "state"],
        )
        for rollout_id, (_index, percent, state) in sorted(m.rollout_phases().items()):
            phase.add_metric([rollout_id, state], percent)
        yield phase


def make_registry(metrics: Metrics) -> CollectorRegistry:
    """Return a registry holding only this server's collector (no global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics))
    return registry
