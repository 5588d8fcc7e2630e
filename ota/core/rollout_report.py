"""The rollout report document: what ``edgefleet rollout status`` shows about one rollout.

One owner for a document two packages exchange: the server builds it (``ota.server.status_cli``) and serves
it at ``GET /v1/rollouts/{id}/report``; the operator client (``ota.client``) parses the answer into the same
class. Plain data, no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TimelineEvent:
    """One audit-log entry about a rollout."""

    at: str
    actor: str
    action: str
    state: str | None = None
    phase: int | None = None
    reason: str | None = None


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
        saved_bytes: ``bytes_saved(delta + full, full_equivalent).saved_bytes`` (never negative).
        saved_fraction: The same as a fraction of ``full_equivalent_bytes``.
        overhead_bytes: Bytes downloaded beyond full-only (retries, resumes, fallbacks).
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
    saved_bytes: int = 0
    saved_fraction: float = 0.0
    overhead_bytes: int = 0
    timeline: list[TimelineEvent] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)
