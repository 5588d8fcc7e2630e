"""Promotion and rollback of model versions with MLflow aliases and an audit trail in model-version tags.

Sits between the registry (``registry.store``) and the ``edgefleet models`` CLI (``registry.cli``), which
only renders what these functions return or raise. Every function takes an explicit ``MlflowClient`` so
integration tests drive them against a real SQLite store without a CLI.

Promotion of ``NAME VERSION --to production``:

1. re-check the version's own gates (``edgefleet.gate.*`` tags, the profile's limits at registration) on its
   recorded metrics with :func:`ml.gates.check_gates`;
2. compare it with the version that holds ``production`` now: accuracy may drop by at most
   ``Margins.accuracy`` (a fraction, 0.005 = half a point) and P99 may grow by at most ``Margins.p99``
   of production's P99 (0.20 = +20 %) or ``Margins.p99_floor_ms``, whichever is larger;
3. re-check the artifact itself, not only its tags: the stored ``model.onnx`` against the size gate
   (``max_size_kb``) and its sha256 against the one recorded at registration (``edgefleet.sha256``);
4. check the version's OTA history: when the release pipeline tagged a rollout on it
   (``edgefleet.release.rollout_id``), a rollout the OTA server reports aborted or rolled back fails
   (:mod:`registry.ota_history`; needs ``EDGEFLEET_OPERATOR_TOKEN``, else the review notes it is unchecked);
5. refuse (:class:`~registry.errors.PromotionRefusedError`) unless everything passes or the caller forces
   with a reason;
6. move the alias, keep the replaced version under ``previous``, and record who, when and why. Only
   aliases and tags are used, never the deprecated stages.

The audit trail is append-only: every promotion, supersession and rollback is its own numbered event,
``edgefleet.history.<n>.{event,alias,actor,at,reason,from_version,to_version,forced,failed_checks}``, on
each version it touched (``models show`` lists them). The single-valued ``edgefleet.promotion.*`` and
``edgefleet.rollback.*`` tags still say what the latest event was. ``forced`` is ``true`` only when
``--force`` overrode a failed check.

Rollback moves ``production`` back to ``previous`` and ``previous`` one step further back, using the
``edgefleet.promotion.from_version`` tag that each promotion wrote.
"""

from __future__ import annotations

import getpass
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml.gates import GateResult
from registry.errors import ModelNotFoundError, PromotionRefusedError, RegistryError
from registry.fields import (
    ARTIFACT_SHA_CHECK,
    ARTIFACT_SIZE_CHECK,
    CANDIDATE_ALIAS,
    DEFAULT_MARGIN_ACCURACY,
    DEFAULT_MARGIN_P99,
    DEFAULT_MARGIN_P99_FLOOR_MS,
    HISTORY_PREFIX,
    MARGIN_ACCURACY_CHECK,
    MARGIN_P99_CHECK,
    NO_GATES_CHECK,
    OTA_HISTORY_CHECK,
    PREVIOUS_ALIAS,
    PRODUCTION_ALIAS,
    PROFILE_TAG,
    PROMOTION_PREFIX,
    ROLLBACK_PREFIX,
    SHA256_TAG,
    TEXT_CHECKS,
    gate_results,
    history_events,
    version_gates,
    version_metrics,
)
from registry.ota_history import ROLLOUT_ID_TAG, SERVER_TAG, RolloutReader
from registry.store import (
    file_sha256,
    model_aliases,
    resolve_version,
)

MODEL_FILE = "model.onnx"


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
class PromotionResult:
    """What a promotion did. ``changed`` is False when the version already held the alias."""

    name: str
    version: str
    alias: str
    replaced_version: str | None
    forced: bool
    changed: bool
    actor: str
    at: str
    reason: str
    review: PromotionReview


@dataclass(frozen=True)
class RollbackResult:
    """What a rollback did: which version left the alias, which one came back, what ``previous`` is now."""

    name: str
    alias: str
    demoted_version: str
    restored_version: str
    previous_version: str | None
    actor: str
    at: str
    reason: str
    candidate_withdrawn: bool = False


def default_actor() -> str:
    """The OS user running the command, or ``unknown`` where the platform cannot say (no passwd entry)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def utc_now() -> str:
    """Current time as UTC ISO 8601 to the second, e.g. ``2026-11-28T02:10:00+00:00``."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def previous_alias_for(alias: str) -> str:
    """Alias for the version ``alias`` replaced: ``previous`` for production, else ``<alias>-previous``."""
    return PREVIOUS_ALIAS if alias == PRODUCTION_ALIAS else f"{alias}-previous"


def artifact_results(
    client: MlflowClient, version: ModelVersion
) -> tuple[tuple[GateResult, ...], str | None]:
    """Re-check the stored ONNX file itself: its size against ``max_size_kb`` and its sha256.

    The file is fetched from the version's storage location (a local store hands back its own path's
    copy; a remote one downloads the single file) into a temporary folder that is removed afterwards.

    Returns:
        The check rows, and a note when the file could not be read (the sha256 row then fails).
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    recorded = version.tags.get(SHA256_TAG)
    limit = version_gates(version).get("max_size_kb")
    try:
        location = client.get_model_version_download_uri(str(version.name), str(version.version))
        with tempfile.TemporaryDirectory(prefix="edgefleet-promote-") as folder:
            path = Path(get_artifact_repository(location).download_artifacts(MODEL_FILE, folder))
            size, actual = path.stat().st_size, file_sha256(path)
    except (MlflowException, OSError) as exc:
        note = f"cannot read {MODEL_FILE} of {version.name} version {version.version}: {exc}"
        return (GateResult(ARTIFACT_SHA_CHECK, "file unreadable", None, 1.0, "=", False),), note
    rows: list[GateResult] = []
    if limit is not None:
        size_kb = size / 1024
        rows.append(
            GateResult(ARTIFACT_SIZE_CHECK, f"{MODEL_FILE} size_kb", size_kb, limit, "≤", size_kb <= limit)
        )
    matches = recorded == actual
    described = (
        f"{actual[:12]}… as recorded"
        if matches
        else f"{actual[:12]}… but registration recorded {(recorded or 'nothing')[:12]}…"
    )
    rows.append(GateResult(ARTIFACT_SHA_CHECK, described, 1.0 if matches else 0.0, 1.0, "=", matches))
    return tuple(rows), None


def history_results(
    version: ModelVersion, reader: RolloutReader | None
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
    """Compare a candidate's metrics with the current production version's. Pure. Missing metrics fail.

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


def review_promotion(
    client: MlflowClient,
    name: str,
    version_or_alias: str,
    *,
    to: str = PRODUCTION_ALIAS,
    margins: Margins | None = None,
    rollouts: RolloutReader | None = None,
) -> PromotionReview:
    """Run every promotion check without changing anything.

    Args:
        client: MLflow client on the registry.
        name: Registered model name.
        version_or_alias: Version number or alias of the version to promote.
        to: Alias the version would move to.
        margins: Allowed regression against the current holder of ``to`` (defaults in :class:`Margins`).
        rollouts: Reads a rollout's state from the OTA server (:func:`registry.ota_history.reader_from_env`);
            None leaves the OTA history unchecked, with a note.

    Returns:
        The review; margin rows are empty when no version holds ``to`` yet, or the version already does.

    Raises:
        ModelNotFoundError: No such model, version or alias.
    """
    margins = margins or Margins()
    version = resolve_version(client, name, version_or_alias)
    current_number = model_aliases(client, name).get(to)
    margin_rows: tuple[GateResult, ...] = ()
    if current_number is not None and current_number != str(version.version):
        current = resolve_version(client, name, current_number)
        margin_rows = margin_results(version_metrics(version), version_metrics(current), margins)
    artifact, artifact_note = artifact_results(client, version)
    history, history_note = history_results(version, rollouts)
    return PromotionReview(
        name=name,
        version=str(version.version),
        target_alias=to,
        profile=version.tags.get(PROFILE_TAG, "unknown"),
        current_version=current_number,
        gates=gate_results(version),
        margins=margin_rows,
        artifact=artifact,
        history=history,
        notes=tuple(note for note in (artifact_note, history_note) if note),
    )


def render_review(review: PromotionReview) -> str:
    """The review as aligned plain text (the message of :class:`PromotionRefusedError`)."""
    rows = [("check", "measured", "limit", "result")]
    for check in review.checks:
        measured = check.metric if check.gate in TEXT_CHECKS else _format_value(check.gate, check.measured)
        rows.append((check.gate, measured, _format_limit(check), _verdict(check)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    against = f" against production version {review.current_version}" if review.margins else ""
    lines = [f"{review.name} version {review.version} (profile {review.profile}){against}:"]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    lines.extend(f"note: {note}" for note in review.notes)
    return "\n".join(lines)


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


def promote(
    client: MlflowClient,
    name: str,
    version_or_alias: str,
    *,
    to: str = PRODUCTION_ALIAS,
    margins: Margins | None = None,
    force: bool = False,
    reason: str | None = None,
    actor: str | None = None,
    rollouts: RolloutReader | None = None,
) -> PromotionResult:
    """Check a version and, if it passes (or is forced with a reason), move ``to`` onto it.

    The version that held ``to`` is kept under :func:`previous_alias_for` (``previous`` for production).
    The promoted version gets ``edgefleet.promotion.{alias,actor,at,reason,from_version,forced,
    failed_checks}`` tags; the replaced one gets ``edgefleet.promotion.superseded_{by,at}``.
    Promoting the version that already holds the alias changes nothing.

    Args:
        client: MLflow client on the registry.
        name: Registered model name.
        version_or_alias: Version number or alias (e.g. ``candidate``) to promote.
        to: Target alias.
        margins: Allowed regression against the current holder (defaults in :class:`Margins`).
        force: Promote even if checks fail; needs ``reason``.
        reason: Why; required with ``force``, recorded in every case.
        actor: Who; defaults to the OS user.
        rollouts: Reads the version's rollout from the OTA server (see :func:`review_promotion`).

    Returns:
        What was done, with the review. ``forced`` is True only when ``force`` overrode a failed check.

    Raises:
        ModelNotFoundError: No such model, version or alias.
        PromotionRefusedError: A check failed and ``force`` is not set (the message is the check table),
            ``force`` without a non-blank ``reason``, or ``to`` is a reserved alias.
        RegistryError: MLflow refused to move the alias or write a tag.
    """
    if force and not (reason and reason.strip()):
        raise PromotionRefusedError("--force needs --reason: a forced promotion must say why, for the audit")
    reserved = {PREVIOUS_ALIAS, CANDIDATE_ALIAS, "latest"}
    if to in reserved or to.endswith("-previous"):
        raise PromotionRefusedError(f"cannot promote to the reserved alias {to!r}")
    review = review_promotion(client, name, version_or_alias, to=to, margins=margins, rollouts=rollouts)
    overrode = force and not review.passed
    if not review.passed and not force:
        raise PromotionRefusedError(
            f"refusing to promote {name} version {review.version} to {to}: "
            f"{', '.join(review.failures)} failed (use --force --reason to override)\n{render_review(review)}"
        )
    who = actor or default_actor()
    when = utc_now()
    why = reason.strip() if reason and reason.strip() else "all promotion checks passed"
    if review.current_version == review.version:
        return PromotionResult(
            name, review.version, to, review.current_version, overrode, False, who, when, why, review
        )
    previous_alias = previous_alias_for(to)
    try:
        if review.current_version is not None:
            client.set_registered_model_alias(name, previous_alias, review.current_version)
            _set_tags(
                client,
                name,
                review.current_version,
                {"superseded_by": review.version, "superseded_at": when},
                PROMOTION_PREFIX,
            )
            _append_event(
                client,
                name,
                review.current_version,
                {
                    "event": "superseded",
                    "alias": to,
                    "actor": who,
                    "at": when,
                    "reason": why,
                    "from_version": review.current_version,
                    "to_version": review.version,
                },
            )
        client.set_registered_model_alias(name, to, review.version)
    except MlflowException as exc:
        raise RegistryError(f"MLflow refused to move {name}@{to} to version {review.version}: {exc}") from exc
    audit = {
        "alias": to,
        "actor": who,
        "at": when,
        "reason": why,
        "from_version": review.current_version or "none",
        # Written on every promotion, not only forced ones, so a stale "true" never survives a clean one;
        # "true" only when --force overrode a failed check (a --force on a passing version changed nothing).
        "forced": str(overrode).lower(),
        "failed_checks": ",".join(review.failures) or "none",
    }
    _set_tags(client, name, review.version, audit, PROMOTION_PREFIX)
    _append_event(client, name, review.version, {"event": "promotion", **audit, "to_version": review.version})
    return PromotionResult(
        name=name,
        version=review.version,
        alias=to,
        replaced_version=review.current_version,
        forced=overrode,
        changed=True,
        actor=who,
        at=when,
        reason=why,
        review=review,
    )


def rollback(
    client: MlflowClient,
    name: str,
    *,
    alias: str = PRODUCTION_ALIAS,
    reason: str | None = None,
    actor: str | None = None,
) -> RollbackResult:
    """Move ``alias`` back to the version kept under ``previous`` and step ``previous`` one further back.

    The new ``previous`` is the version the restored one replaced when it was promoted (its
    ``edgefleet.promotion.from_version`` tag), if that version still exists and is not the one being
    demoted; otherwise ``previous`` is removed. Both versions get ``edgefleet.rollback.*`` tags.

    Args:
        client: MLflow client on the registry.
        name: Registered model name.
        alias: Alias to roll back.
        reason: Why; recorded.
        actor: Who; defaults to the OS user.

    Returns:
        What was done.

    Raises:
        ModelNotFoundError: No such model, nothing holds ``alias``, or there is no previous version.
        RegistryError: MLflow refused to move an alias or write a tag.
    """
    previous_alias = previous_alias_for(alias)
    aliases = model_aliases(client, name)
    demoted = aliases.get(alias)
    restored = aliases.get(previous_alias)
    if demoted is None:
        raise ModelNotFoundError(f"{name} has no {alias!r} version to roll back")
    if restored is None:
        raise ModelNotFoundError(f"{name} has no {previous_alias!r} version to roll back to")
    restored_version = resolve_version(client, name, restored)
    before = restored_version.tags.get(f"{PROMOTION_PREFIX}from_version", "none")
    new_previous = before if before.isdigit() and before not in (demoted, restored) else None
    if new_previous is not None:
        try:
            resolve_version(client, name, new_previous)
        except ModelNotFoundError:
            new_previous = None  # that version was deleted since; nothing to step back to
    who = actor or default_actor()
    when = utc_now()
    why = reason.strip() if reason and reason.strip() else "manual rollback"
    withdraw_candidate = aliases.get(CANDIDATE_ALIAS) == demoted
    try:
        client.set_registered_model_alias(name, alias, restored)
        if new_previous is not None:
            client.set_registered_model_alias(name, previous_alias, new_previous)
        else:
            client.delete_registered_model_alias(name, previous_alias)
        if withdraw_candidate:
            client.delete_registered_model_alias(name, CANDIDATE_ALIAS)
    except MlflowException as exc:
        raise RegistryError(
            f"MLflow refused to roll {name}@{alias} back to version {restored}: {exc}"
        ) from exc
    audit = {
        "alias": alias,
        "actor": who,
        "at": when,
        "reason": why,
        "from_version": demoted,
        "to_version": restored,
    }
    _set_tags(client, name, restored, audit, ROLLBACK_PREFIX)
    _set_tags(client, name, demoted, audit, ROLLBACK_PREFIX)
    for version in (restored, demoted):
        _append_event(client, name, version, {"event": "rollback", **audit})
    return RollbackResult(name, alias, demoted, restored, new_previous, who, when, why, withdraw_candidate)


def _set_tags(client: MlflowClient, name: str, version: str, tags: Mapping[str, str], prefix: str) -> None:
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, f"{prefix}{key}", value)
    except MlflowException as exc:
        raise RegistryError(f"MLflow refused to tag {name} version {version}: {exc}") from exc


def _append_event(client: MlflowClient, name: str, version: str, event: Mapping[str, str]) -> None:
    """Add one event under the next free ``edgefleet.history.<n>.``; earlier events are never rewritten."""
    try:
        current = client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"MLflow refused to read {name} version {version}: {exc}") from exc
    used = [int(e["n"]) for e in history_events(current)]
    _set_tags(client, name, version, event, f"{HISTORY_PREFIX}{max(used, default=0) + 1}.")
