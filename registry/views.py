"""Rich renderings of registry state for the ``edgefleet models`` CLI (``registry.cli``).

Pure presentation: every function takes values already read from MLflow and returns a rich renderable,
so the CLI stays a thin sequence of read → render, and the layout can change without touching promotion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ml.gates import GateResult
from registry.fields import VersionLike, logged_model_id
from registry.policy import (
    NO_GATES_CHECK,
    OTA_HISTORY_CHECK,
    PROMOTION_PREFIX,
    ROLLBACK_PREFIX,
    TEXT_CHECKS,
    PromotionReview,
    history_events,
)
from registry.tags import CONTENT_HASH_TAG, PROFILE_TAG, SHA256_TAG, VARIANT_TAG, metrics_from_tags

LINEAGE_PREFIX = "edgefleet.lineage."
# The metrics an ML engineer decides on, in reading order; the rest follow alphabetically.
KEY_METRICS = (
    "accuracy",
    "accuracy_drop_vs_teacher",
    "teacher_accuracy",
    "size_kb",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "throughput_sps",
    "cold_start_ms",
    "peak_rss_mib",
    "speedup_vs_teacher_p50",
)
# Metric names containing these read as fractions and are shown as percentages.
_FRACTION_MARKERS = ("accuracy", "agreement", "kd_gain")


def is_fraction(metric: str) -> bool:
    """Whether a metric (or check) is a fraction best shown as a percentage."""
    return any(marker in metric for marker in _FRACTION_MARKERS)


def format_metric(metric: str, value: float | None) -> str:
    """A metric value for a table cell: percentages for fractions, four significant digits otherwise."""
    if value is None or math.isnan(value):
        return "—"
    if is_fraction(metric):
        return f"{100 * value:.2f} %"
    # Byte counts and throughputs are large; '4.352e+04' is harder to read than '43520'.
    if abs(value) >= 1e4:
        return f"{value:.0f}"
    # Latencies are noisy beyond three digits, and the columns must fit an 80-column terminal.
    return f"{value:.3g}" if metric.endswith("_ms") else f"{value:.4g}"


def format_difference(metric: str, a: float | None, b: float | None) -> str:
    """``b - a`` with a sign, in percentage points for fractions; ``—`` when either side is missing."""
    if a is None or b is None:
        return "—"
    delta = b - a
    if is_fraction(metric):
        return f"{100 * delta:+.2f} pp"
    relative = f" ({delta / a:+.1%})" if a else ""
    return f"{delta:+.4g}{relative}"


def format_age(created_ms: int | None, now: datetime | None = None) -> str:
    """How long ago a version was created, coarsely: ``42s``, ``7m``, ``3h``, ``12d``."""
    if not created_ms:
        return "—"
    now = now or datetime.now(UTC)
    seconds = max(0.0, now.timestamp() - created_ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def format_timestamp(created_ms: int | None) -> str:
    """A registry timestamp (ms since the epoch) as UTC ISO 8601."""
    if not created_ms:
        return "—"
    return datetime.fromtimestamp(created_ms / 1000, UTC).isoformat(timespec="seconds")


def _aliases_of(version: str, aliases: Mapping[str, str], separator: str = ", ") -> str:
    return separator.join(sorted(alias for alias, number in aliases.items() if number == version))


def versions_table(
    name: str, versions: Sequence[VersionLike], aliases: Mapping[str, str], now: datetime | None = None
) -> Table:
    """One row per version of a registered model: aliases, key metrics, profile and age."""
    # One registered model per profile, so the profile goes in the title rather than in every row.
    profiles = sorted({v.tags.get(PROFILE_TAG, "—") for v in versions}) or ["—"]
    table = Table(title=f"{name} (profile {', '.join(profiles)})", title_justify="left")
    # Numbers never wrap; names fold instead, so the table stays readable in an 80-column terminal.
    table.add_column("ver", no_wrap=True)
    table.add_column("aliases", no_wrap=True)
    table.add_column("variant", overflow="fold", min_width=10)
    for column in ("accuracy", "Δ teacher", "KB", "P50 ms", "P99 ms", "age"):
        table.add_column(column, justify="right", no_wrap=True)
    for version in versions:
        metrics = metrics_from_tags(version.tags)
        table.add_row(
            str(version.version),
            _aliases_of(str(version.version), aliases, "\n"),
            version.tags.get(VARIANT_TAG, "—"),
            format_metric("accuracy", metrics.get("accuracy")),
            format_metric("accuracy_drop_vs_teacher", metrics.get("accuracy_drop_vs_teacher")),
            format_metric("size_kb", metrics.get("size_kb")),
            format_metric("p50_ms", metrics.get("p50_ms")),
            format_metric("p99_ms", metrics.get("p99_ms")),
            format_age(version.creation_timestamp, now),
        )
    return table


def _ordered_metrics(names: set[str]) -> list[str]:
    return [m for m in KEY_METRICS if m in names] + sorted(names - set(KEY_METRICS))


def _key_value_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _tags_under(version: VersionLike, prefix: str) -> list[tuple[str, str]]:
    return sorted((k[len(prefix) :], v) for k, v in version.tags.items() if k.startswith(prefix))


def version_detail(
    version: VersionLike,
    aliases: Mapping[str, str],
    gates: Sequence[GateResult],
    artifacts: Sequence[tuple[str, int | None]],
) -> Group:
    """Everything about one version: identity, lineage, metrics, gates, audit trail and artifacts."""
    number = str(version.version)
    identity = [
        ("model", str(version.name)),
        ("version", number),
        ("aliases", _aliases_of(number, aliases) or "—"),
        ("created", format_timestamp(version.creation_timestamp)),
        ("profile", version.tags.get(PROFILE_TAG, "—")),
        ("variant", version.tags.get(VARIANT_TAG, "—")),
        ("sha256", version.tags.get(SHA256_TAG, "—")),
        ("content hash", version.tags.get(CONTENT_HASH_TAG, "—")),
        ("run id", str(version.run_id or "—")),
        ("logged model", logged_model_id(version) or "—"),
        ("source", str(version.source or "—")),
        ("status", str(version.status)),
    ]
    parts: list[RenderableType] = [_key_value_table(f"{version.name} version {number}", identity)]
    parts.append(_key_value_table("lineage", _tags_under(version, LINEAGE_PREFIX) or [("—", "no lineage")]))
    metrics = metrics_from_tags(version.tags)
    metric_table = Table(title="metrics", title_justify="left")
    metric_table.add_column("metric", no_wrap=True)
    metric_table.add_column("value", justify="right")
    for metric in _ordered_metrics(set(metrics)):
        metric_table.add_row(metric, format_metric(metric, metrics[metric]))
    parts.append(metric_table)
    parts.append(gates_table("gates (re-checked on the recorded metrics)", {number: gates}))
    for prefix, title in ((PROMOTION_PREFIX, "latest promotion"), (ROLLBACK_PREFIX, "latest rollback")):
        audit = _tags_under(version, prefix)
        if audit:
            parts.append(_key_value_table(title, audit))
    events = history_events(version)
    if events:
        parts.append(history_table(events))
    artifact_table = Table(title="artifacts", title_justify="left")
    artifact_table.add_column("path", overflow="fold")
    artifact_table.add_column("bytes", justify="right")
    for path, size in artifacts:
        artifact_table.add_row(path, "—" if size is None else str(size))
    parts.append(artifact_table)
    return Group(*parts)


HISTORY_COLUMNS = ("event", "alias", "from_version", "to_version", "actor", "at", "forced", "reason")


def history_table(events: Sequence[Mapping[str, str]]) -> Table:
    """Every promotion, supersession and rollback of a version, oldest first (the append-only trail)."""
    table = Table(title="history (append-only)", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    for column in HISTORY_COLUMNS:
        table.add_column(column.replace("_version", ""), overflow="fold")
    for event in events:
        table.add_row(event["n"], *(event.get(column, "—") for column in HISTORY_COLUMNS))
    return table


def _verdict(result: GateResult) -> Text:
    return Text("pass", style="green") if result.passed else Text("FAIL", style="bold red")


def _limit(result: GateResult) -> str:
    if result.gate == NO_GATES_CHECK:
        return "present"
    if result.gate in TEXT_CHECKS:
        return "not aborted" if result.gate == OTA_HISTORY_CHECK else "matches"
    return f"{result.comparison} {format_metric(result.gate, result.limit)}"


def _measured(result: GateResult) -> str:
    # Text checks (sha256, OTA history) carry their finding as a sentence in ``metric``.
    return result.metric if result.gate in TEXT_CHECKS else format_metric(result.gate, result.measured)


def gates_table(title: str, results: Mapping[str, Sequence[GateResult]]) -> Table:
    """Check × version table: measured value, limit, pass/FAIL."""
    table = Table(title=title, title_justify="left")
    table.add_column("version", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("measured", justify="right", no_wrap=True)
    table.add_column("limit", justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for version, rows in results.items():
        for result in rows:
            table.add_row(version, result.gate, _measured(result), _limit(result), _verdict(result))
    return table


def compare_table(name: str, a: VersionLike, b: VersionLike) -> Table:
    """Metrics of two versions side by side with the difference ``B - A``."""
    metrics_a, metrics_b = metrics_from_tags(a.tags), metrics_from_tags(b.tags)
    table = Table(title=f"{name}: version {a.version} (A) vs {b.version} (B)", title_justify="left")
    table.add_column("metric", no_wrap=True)
    table.add_column(f"A = v{a.version}", justify="right", no_wrap=True)
    table.add_column(f"B = v{b.version}", justify="right", no_wrap=True)
    table.add_column("B - A", justify="right", no_wrap=True)
    for metric in _ordered_metrics(set(metrics_a) | set(metrics_b)):
        left, right = metrics_a.get(metric), metrics_b.get(metric)
        table.add_row(
            metric,
            format_metric(metric, left),
            format_metric(metric, right),
            format_difference(metric, left, right),
        )
    return table


def review_table(review: PromotionReview) -> Table:
    """The checks of a promotion: the version's gates, then the margins against the current holder."""
    against = f", vs {review.target_alias} v{review.current_version}" if review.margins else ""
    verdict = "all checks pass" if review.passed else "checks FAILED"
    table = Table(
        title=f"promote {review.name} v{review.version} → {review.target_alias} "
        f"(profile {review.profile}{against}): {verdict}",
        title_justify="left",
    )
    table.add_column("kind", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("measured", justify="right", overflow="fold")
    table.add_column("limit", justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for kind, rows in (
        ("gate", review.gates),
        ("artifact", review.artifact),
        ("ota", review.history),
        ("margin", review.margins),
    ):
        for result in rows:
            table.add_row(kind, result.gate, _measured(result), _limit(result), _verdict(result))
    return table
