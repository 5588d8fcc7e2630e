"""The promotion policy, pure: which checks a version must pass to take an alias, and when ``--force`` may
override them. No MLflow here: ``registry.promotion`` reads the registry through a port
(``registry.port``) and hands this module plain tags, metrics, file facts and the OTA history reader.

The checks, in table order:

1. the version's own gates (``edgefleet.gate.*`` tags, the profile's limits at registration) re-checked on its
   recorded metrics with :func:`ml.gates.check_gates` (no gate tags: one failing ``gate_tags_present`` row);
2. the stored artifact itself, not only its tags: the file against the size gate (``max_size_kb``) and its
   sha256 against the one recorded at registration (``edgefleet.sha256``);
3. the OTA history: when the release pipeline tagged a rollout on the version
   (``edgefleet.release.rollout_id``), a rollout the OTA server reports aborted or rolled back fails;
4. the comparison with the version that holds the alias now: accuracy may drop by at most
   ``Margins.accuracy`` and P99 may grow by at most ``Margins.p99`` of the holder's P99 or
   ``Margins.p99_floor_ms``, whichever is larger.

A failed check refuses the promotion (:class:`~registry.errors.PromotionRefusedError`, which carries the
review) unless the caller forces it with a non-blank reason; reserved aliases can never be targets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ml.errors import GateError
from ml.gates import GateProfile, GateResult, check_gates
from registry.errors import PromotionRefusedError, RegistryError
from registry.ota_history import ROLLOUT_ID_TAG, SERVER_TAG, RolloutReader
from registry.tags import (
    CANDIDATE_ALIAS,
    MODEL_FILE,
    PROFILE_TAG,
    SHA256_TAG,
    gates_from_tags,
    metrics_from_tags,
)

PRODUCTION_ALIAS = "production"
PREVIOUS_ALIAS = "previous"
PROMOTION_PREFIX = "edgefleet.promotion."
ROLLBACK_PREFIX = "edgefleet.rollback."
HISTORY_PREFIX = "edgefleet.history."
# Half an accuracy point: about the run-to-run noise of a digits-sized test split, so a real regression
# is caught while retraining noise is not.
DEFAULT_MARGIN_ACCURACY = 0.005
# P99 of a millisecond-sized model on a shared CPU moves by 10-15 % between identical runs; 20 % leaves
# room for that noise and still catches a model that got genuinely slower.
DEFAULT_MARGIN_P99 = 0.20
# Below ~50 µs, P99 differences are timer and scheduler noise (the digits model's P99 is ~0.07 ms, where
# 20 % is 14 µs), so an absolute floor keeps a fine-tune of the same network from being refused on noise.
# The profile's max_p99_ms gate still bounds the absolute latency.
DEFAULT_MARGIN_P99_FLOOR_MS = 0.05
# Names of the checks, as they appear in the refusal table and the forced-promotion audit tag.
MARGIN_ACCURACY_CHECK = "accuracy_drop_vs_production"
MARGIN_P99_CHECK = "p99_ms_increase_vs_production"
NO_GATES_CHECK = "gate_tags_present"
ARTIFACT_SIZE_CHECK = "max_size_kb_of_the_stored_file"
ARTIFACT_SHA_CHECK = "sha256_as_registered"
OTA_HISTORY_CHECK = "rollout_not_aborted"
#: Checks whose "measured" cell is a sentence (kept in ``GateResult.metric``) rather than a number.
TEXT_CHECKS = frozenset({ARTIFACT_SHA_CHECK, OTA_HISTORY_CHECK})


class Tagged(Protocol):
    """A model version as the policy reads it: its number and its tags (an MLflow ``ModelVersion`` is one)."""

    @property
    def version(self) -> int | str:
        """The version number (MLflow's SQL store gives an int)."""
        ...

    @property
    def tags(self) -> Mapping[str, str]:
        """Its tags."""
        ...


@dataclass(frozen=True)
class Margins:
    """How much worse than the current production version a promoted version may be.

    Attributes:
        accuracy: Largest allowed accuracy drop, as a fraction (0.005 = half a percentage point).
        p99: Largest allowed P99 increase relative to production's P99 (0.20 = 20 % slower).
        p99_floor_ms: Smallest allowed P99 increase in milliseconds, whatever ``p99`` gives.
    """

    accuracy: float = DEFAULT_MARGIN_ACCURACY
    p99: float = DEFAULT_MARGIN_P99
    p99_floor_ms: float = DEFAULT_MARGIN_P99_FLOOR_MS

    def __post_init__(self) -> None:
        """Refuse negative or non-finite margins: they would silently refuse (or accept) everything.

        Raises:
            RegistryError: A margin is negative, NaN or infinite.
        """
        for label, value in (
            ("accuracy", self.accuracy),
            ("p99", self.p99),
            ("p99_floor_ms", self.p99_floor_ms),
        ):
            if not math.isfinite(value) or value < 0:
                raise RegistryError(f"margin {label} must be a finite number ≥ 0, got {value!r}")


@dataclass(frozen=True)
class PromotionReview:
    """Every check of one promotion, passed or not. ``gates`` and ``margins`` reuse ``GateResult`` rows."""

    name: str
    version: str
    target_alias: str
    profile: str
    current_version: str | None
    gates: tuple[GateResult, ...]
    margins: tuple[GateResult, ...]
    artifact: tuple[GateResult, ...] = ()
    history: tuple[GateResult, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def checks(self) -> tuple[GateResult, ...]:
        """Gates, the stored artifact, the OTA history, then the comparison with the current holder."""
        return self.gates + self.artifact + self.history + self.margins

    @property
    def failures(self) -> tuple[str, ...]:
        """Names of the failed checks, in table order."""
        return tuple(check.gate for check in self.checks if not check.passed)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return not self.failures


@dataclass(frozen=True)
class StoredFile:
    """What reading a version's stored ``model.onnx`` gave: its size and sha256, or why it failed."""

    size: int = 0
    sha256: str = ""
    error: str | None = None


def previous_alias_for(alias: str) -> str:
    """Alias for the version ``alias`` replaced: ``previous`` for production, else ``<alias>-previous``."""
    return PREVIOUS_ALIAS if alias == PRODUCTION_ALIAS else f"{alias}-previous"


def gate_results(version: Tagged) -> tuple[GateResult, ...]:
    """Re-check a version's own gates (its ``edgefleet.gate.*`` tags) on its recorded metrics.

    A version registered without gate tags cannot be re-checked; it gets one failing
    ``gate_tags_present`` row so that it is refused unless forced, instead of passing vacuously.
    """
    profile_name = version.tags.get(PROFILE_TAG, "unknown")
    metrics = metrics_from_tags(version.tags)
    try:
        profile = GateProfile.from_config(profile_name, gates_from_tags(version.tags))
    except GateError:
        return (GateResult(NO_GATES_CHECK, "edgefleet.gate.* tags", None, 1.0, "≥", False),)
    return tuple(check_gates(profile, metrics, metrics.get("teacher_accuracy")))


def artifact_results(version: Tagged, stored: StoredFile) -> tuple[GateResult, ...]:
    """Check the stored file against the size gate (``max_size_kb``) and the sha256 recorded at registration.

    An unreadable file (``stored.error``) gives one failing sha256 row.
    """
    if stored.error is not None:
        return (GateResult(ARTIFACT_SHA_CHECK, "file unreadable", None, 1.0, "=", False),)
    recorded = version.tags.get(SHA256_TAG)
    limit = gates_from_tags(version.tags).get("max_size_kb")
    rows: list[GateResult] = []
    if limit is not None:
        size_kb = stored.size / 1024
        rows.append(
            GateResult(ARTIFACT_SIZE_CHECK, f"{MODEL_FILE} size_kb", size_kb, limit, "≤", size_kb <= limit)
        )
    matches = recorded == stored.sha256
    described = (
        f"{stored.sha256[:12]}… as recorded"
        if matches
        else f"{stored.sha256[:12]}… but registration recorded {(recorded or 'nothing')[:12]}…"
    )
    rows.append(GateResult(ARTIFACT_SHA_CHECK, described, 1.0 if matches else 0.0, 1.0, "=", matches))
    return tuple(rows)


def history_results(
    version: Tagged, reader: RolloutReader | None
) -> tuple[tuple[GateResult, ...], str | None]:
    """Check the version's last rollout (``edgefleet.release.rollout_id``) did not abort or roll back.

    Returns:
        No row when the version was never rolled out; no row and a note when it was but no reader is
        configured (no operator token); otherwise one row, failing when the rollout was withdrawn or its
        state cannot be read.
    """
    rollout_id = version.tags.get(ROLLOUT_ID_TAG)
    if not rollout_id:
        return (), None
    if reader is None:
        return (), (
            f"OTA history not checked: version {version.version} was rolled out ({rollout_id}); "
            "set EDGEFLEET_OPERATOR_TOKEN (and EDGEFLEET_SERVER) to check that rollout"
        )
    try:
        record = reader(version.tags.get(SERVER_TAG, ""), rollout_id)
    except RegistryError as exc:
        return (GateResult(OTA_HISTORY_CHECK, f"unknown: {exc}", None, 0.0, "=", False),), str(exc)
    reason = f" ({record.reason})" if record.reason else ""
    described = f"rollout {rollout_id} {record.state}{reason}"
    passed = not record.withdrawn
    return (GateResult(OTA_HISTORY_CHECK, described, 0.0 if passed else 1.0, 0.0, "=", passed),), None


def margin_results(
    candidate: Mapping[str, float], current: Mapping[str, float], margins: Margins
) -> tuple[GateResult, ...]:
    """Compare a candidate's metrics with the current production version's. Missing metrics fail.

    Args:
        candidate: Metrics of the version being promoted.
        current: Metrics of the version that holds the alias now.
        margins: The allowed regression.

    Returns:
        Two rows: accuracy drop (``current - candidate``, fraction, limit ``margins.accuracy``) and P99
        increase in ms (``candidate - current``, limit ``max(margins.p99 × current, margins.p99_floor_ms)``).
    """
    drop: float | None = None
    if "accuracy" in candidate and "accuracy" in current:
        drop = current["accuracy"] - candidate["accuracy"]
    increase: float | None = None
    p99_limit = margins.p99_floor_ms
    if "p99_ms" in candidate and "p99_ms" in current:
        increase = candidate["p99_ms"] - current["p99_ms"]
        p99_limit = max(margins.p99 * current["p99_ms"], margins.p99_floor_ms)
    rows: list[GateResult] = []
    for check, metric, measured, limit in (
        (MARGIN_ACCURACY_CHECK, "production accuracy - accuracy", drop, margins.accuracy),
        (MARGIN_P99_CHECK, "p99_ms - production p99_ms", increase, p99_limit),
    ):
        passed = measured is not None and math.isfinite(measured) and measured <= limit
        rows.append(GateResult(check, metric, measured, limit, "≤", passed))
    return tuple(rows)


def review(
    name: str,
    version: Tagged,
    *,
    to: str,
    current: Tagged | None,
    stored: StoredFile,
    margins: Margins,
    rollouts: RolloutReader | None,
) -> PromotionReview:
    """Run every check of promoting ``version`` to ``to``.

    Args:
        name: Registered model name.
        version: The version to promote.
        to: The target alias.
        current: The version holding ``to`` now (None when none does); no margin rows when it is ``version``.
        stored: What reading the version's stored file gave.
        margins: Allowed regression against ``current``.
        rollouts: Reads a rollout's state from the OTA server; None leaves the history unchecked, with a note.
    """
    margin_rows: tuple[GateResult, ...] = ()
    if current is not None and str(current.version) != str(version.version):
        candidate, holder = metrics_from_tags(version.tags), metrics_from_tags(current.tags)
        margin_rows = margin_results(candidate, holder, margins)
    artifact_note = (
        f"cannot read {MODEL_FILE} of {name} version {version.version}: {stored.error}"
        if stored.error is not None
        else None
    )
    history, history_note = history_results(version, rollouts)
    return PromotionReview(
        name=name,
        version=str(version.version),
        target_alias=to,
        profile=version.tags.get(PROFILE_TAG, "unknown"),
        current_version=None if current is None else str(current.version),
        gates=gate_results(version),
        margins=margin_rows,
        artifact=artifact_results(version, stored),
        history=history,
        notes=tuple(note for note in (artifact_note, history_note) if note),
    )


def check_request(to: str, *, force: bool, reason: str | None) -> None:
    """Refuse a promotion request before any check runs: ``--force`` without a reason, a reserved alias.

    Raises:
        PromotionRefusedError: ``force`` without a non-blank ``reason``, or ``to`` is ``previous``,
            ``candidate``, ``latest`` or ends in ``-previous``.
    """
    if force and not (reason and reason.strip()):
        raise PromotionRefusedError("--force needs --reason: a forced promotion must say why, for the audit")
    reserved = {PREVIOUS_ALIAS, CANDIDATE_ALIAS, "latest"}
    if to in reserved or to.endswith("-previous"):
        raise PromotionRefusedError(f"cannot promote to the reserved alias {to!r}")


def decide(result: PromotionReview, *, force: bool) -> bool:
    """Whether the promotion may go on; True when ``force`` overrode a failed check.

    Raises:
        PromotionRefusedError: A check failed and ``force`` is not set; it carries ``result`` as ``review``
            and its message is the check table.
    """
    if not result.passed and not force:
        raise PromotionRefusedError(
            f"refusing to promote {result.name} version {result.version} to {result.target_alias}: "
            f"{', '.join(result.failures)} failed (use --force --reason to override)\n"
            + render_review(result),
            review=result,
        )
    return force and not result.passed


def render_review(result: PromotionReview) -> str:
    """The review as aligned plain text (the message of :class:`PromotionRefusedError`)."""
    rows = [("check", "measured", "limit", "result")]
    for check in result.checks:
        measured = check.metric if check.gate in TEXT_CHECKS else _format_value(check.gate, check.measured)
        rows.append((check.gate, measured, _format_limit(check), _verdict(check)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    against = f" against production version {result.current_version}" if result.margins else ""
    lines = [f"{result.name} version {result.version} (profile {result.profile}){against}:"]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)


def history_events(version: Tagged) -> list[dict[str, str]]:
    """The version's audit events (``edgefleet.history.<n>.*`` tags), oldest first, each with its ``n``."""
    events: dict[int, dict[str, str]] = {}
    for key, value in version.tags.items():
        if not key.startswith(HISTORY_PREFIX):
            continue
        number, _, field = key[len(HISTORY_PREFIX) :].partition(".")
        if number.isdigit() and field:
            events.setdefault(int(number), {"n": number})[field] = value
    return [events[n] for n in sorted(events)]


def next_event_prefix(version: Tagged) -> str:
    """The tag prefix of the version's next audit event: ``edgefleet.history.<n+1>.``."""
    used = [int(e["n"]) for e in history_events(version)]
    return f"{HISTORY_PREFIX}{max(used, default=0) + 1}."


def _verdict(check: GateResult) -> str:
    return "pass" if check.passed else "FAIL"


def _is_fraction(check_name: str) -> bool:
    # Accuracies and accuracy drops read best as percentages; latencies and sizes do not.
    return "accuracy" in check_name or "agreement" in check_name


def _format_value(check_name: str, value: float | None) -> str:
    if value is None:
        return "missing"
    return f"{100 * value:.2f} %" if _is_fraction(check_name) else f"{value:.4g}"


def _format_limit(check: GateResult) -> str:
    if check.gate == NO_GATES_CHECK:
        return "present"
    if check.gate in TEXT_CHECKS:
        return "not aborted" if check.gate == OTA_HISTORY_CHECK else "matches"
    return f"{check.comparison} {_format_value(check.gate, check.limit)}"
