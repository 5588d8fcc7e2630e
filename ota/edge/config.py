"""The edge agent's limits, as one plain dataclass (no settings framework: the agent runs on a vehicle).

Every bound the agent enforces lives here so that an integrator can read them in one place: how often to
poll, how much to download, how hard to retry, how long a health check may take, whether a metered link may
fall back from a delta to a full download, and how many crashes a model on trial gets before it is rolled
back. :meth:`AgentConfig.__post_init__` refuses nonsense with a :class:`~ota.edge.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ota.edge.errors import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Limits and policies of one edge agent.

    Attributes:
        poll_interval_min_s: Lower bound on the poll interval, whatever the server asks (no busy loop).
        poll_interval_max_s: Upper bound on the poll interval.
        poll_interval_default_s: Interval used until the server names one.
        poll_jitter_fraction: The interval is spread uniformly by ± this fraction so a fleet does not pulse.
        max_download_bytes: No target or delta larger than this is downloaded, whatever is declared.
        max_metadata_bytes: Cap on any one metadata or assignment document.
        max_selftest_bytes: Cap on the self-test vectors file.
        retry_base_s: First backoff step after an error.
        retry_cap_s: Backoff never waits longer than this.
        max_download_retries: Attempts per download before giving up until the next poll.
        connect_timeout_s: TCP/TLS connect timeout.
        read_timeout_s: Longest silence tolerated while reading a response.
        min_download_rate_bps: Average rate below which a download is a slow-retrieval attack.
        slow_retrieval_grace_s: The rate is only judged after this many seconds of a transfer.
        health_check_budget_s: Wall-clock budget for loading, warming up and testing a new model.
        warmup_runs: Inference runs discarded before latency is measured (ORT's cold start).
        latency_runs: Timed runs whose median is compared with the latency budget.
        default_latency_budget_ms: Budget when neither the vectors nor the profile name one.
        ort_intra_op_threads: ONNX Runtime intra-op threads for health checks and ActiveModel (0 = ORT's
            default; the fleet simulator sets 1 so hundreds of agents share a few cores).
        allow_full_fallback: After a delta fails, download the full target (False on metered links).
        max_trial_boots: Agent starts allowed while a model is on trial; one more rolls it back.
        max_same_failures: A target that fails the same way this many times is not retried until the
            assignment changes.
        report_queue_max: Queued reports kept on disk while offline; the oldest are dropped beyond it.
        disk_margin_bytes: Free space an update must leave on the state dir's filesystem beyond its own
            files (see :meth:`ota.edge.install.Installer.space_needed`): room for the state file's
            temp-file rewrites, queued reports and refreshed TUF metadata, so that a download that fits
            never leaves the agent unable to record or report what happened.
    """

    poll_interval_min_s: float = 5.0
    poll_interval_max_s: float = 3600.0
    poll_interval_default_s: float = 60.0
    poll_jitter_fraction: float = 0.1
    max_download_bytes: int = 1024 * MIB
    max_metadata_bytes: int = 1 * MIB
    max_selftest_bytes: int = 64 * MIB
    retry_base_s: float = 1.0
    retry_cap_s: float = 300.0
    max_download_retries: int = 8
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    min_download_rate_bps: float = 1024.0
    slow_retrieval_grace_s: float = 10.0
    health_check_budget_s: float = 120.0
    warmup_runs: int = 3
    latency_runs: int = 10
    default_latency_budget_ms: float = 1000.0
    ort_intra_op_threads: int = 0
    allow_full_fallback: bool = True
    max_trial_boots: int = 3
    max_same_failures: int = 1
    report_queue_max: int = 1000
    disk_margin_bytes: int = 4 * MIB

    def __post_init__(self) -> None:
        """Check the limits are coherent.

        Raises:
            ConfigError: If a bound is negative, zero where it must be positive, or min > max.
        """
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float) and value < 0:
                raise ConfigError(f"AgentConfig.{field.name} must be ≥ 0, got {value}")
        positive = (
            "poll_interval_min_s",
            "max_download_bytes",
            "max_metadata_bytes",
            "max_selftest_bytes",
            "retry_base_s",
            "max_download_retries",
            "connect_timeout_s",
            "read_timeout_s",
            "health_check_budget_s",
            "latency_runs",
            "max_trial_boots",
            "max_same_failures",
            "report_queue_max",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"AgentConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.poll_interval_min_s > self.poll_interval_max_s:
            raise ConfigError(
                f"poll_interval_min_s ({self.poll_interval_min_s}) > poll_interval_max_s "
                f"({self.poll_interval_max_s})"
            )
        if not self.poll_interval_min_s <= self.poll_interval_default_s <= self.poll_interval_max_s:
            raise ConfigError(
                "poll_interval_default_s must lie within [poll_interval_min_s, poll_interval_max_s]"
            )
        if self.retry_base_s > self.retry_cap_s:
            raise ConfigError(f"retry_base_s ({self.retry_base_s}) > retry_cap_s ({self.retry_cap_s})")
        if self.poll_jitter_fraction >= 1:
            raise ConfigError("poll_jitter_fraction must be < 1, or an interval could reach zero")

    def clamp_poll_interval(self, seconds: float | None) -> float:
        """Bound a server-suggested poll interval to the configured range.

        Args:
            seconds: The interval the server asked for, or None for the default.

        Returns:
            The interval to use, within ``[poll_interval_min_s, poll_interval_max_s]``.
        """
        if seconds is None or seconds != seconds:  # None or NaN: fall back to the default
            return self.poll_interval_default_s
        return min(self.poll_interval_max_s, max(self.poll_interval_min_s, float(seconds)))
