"""Promotion and rollback of model versions with aliases and an audit trail in model-version tags.

Sits between the registry port (``registry.port``: MLflow through ``registry.mlflow_registry``, or the
in-memory fake in unit tests) and the ``edgefleet models`` CLI (``registry.cli``), which only renders what
these functions return or raise. The checks and the ``--force`` rules are the pure policy in
:mod:`registry.policy`; this module reads what they need through the port, then moves the aliases and
writes the audit tags. Every function takes an explicit ``MlflowClient`` or port, so integration tests
drive them against a real SQLite store without a CLI.

Promotion of ``NAME VERSION --to production`` runs every check of :func:`registry.policy.review` (gates,
stored artifact, OTA history, margins against the current holder), refuses
(:class:`~registry.errors.PromotionRefusedError`, carrying the review) unless everything passes or the caller
forces with a reason, then moves the alias, keeps the replaced version under ``previous``, and records who,
when and why. Only aliases and tags are used, never the deprecated stages.

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
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ml.files import file_sha256
from registry import policy
from registry.errors import ModelNotFoundError, RegistryError
from registry.ota_history import RolloutReader
from registry.policy import (
    PRODUCTION_ALIAS,
    PROMOTION_PREFIX,
    ROLLBACK_PREFIX,
    Margins,
    PromotionReview,
    StoredFile,
    previous_alias_for,
)
from registry.port import RegistryPort
from registry.tags import CANDIDATE_ALIAS

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def as_port(registry: MlflowClient | RegistryPort) -> RegistryPort:
    """The port for ``registry``: an ``MlflowClient`` is wrapped in
    ``registry.mlflow_registry.MlflowRegistry`` (imported only then, so promotion on the in-memory registry
    never loads MLflow)."""
    if isinstance(registry, RegistryPort):
        return registry
    from registry.mlflow_registry import MlflowRegistry

    return MlflowRegistry(registry)


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


def stored_file(port: RegistryPort, name: str, version: str) -> StoredFile:
    """Read the version's stored ``model.onnx`` into a temporary folder (removed afterwards): size, sha256."""
    try:
        with tempfile.TemporaryDirectory(prefix="edgefleet-promote-") as folder:
            path = port.download_model_file(name, version, Path(folder))
            return StoredFile(size=path.stat().st_size, sha256=file_sha256(path))
    except (RegistryError, OSError) as exc:
        return StoredFile(error=str(exc))


def review_promotion(
    registry: MlflowClient | RegistryPort,
    name: str,
    version_or_alias: str,
    *,
    to: str = PRODUCTION_ALIAS,
    margins: Margins | None = None,
    rollouts: RolloutReader | None = None,
) -> PromotionReview:
    """Run every promotion check without changing anything.

    Args:
        registry: MLflow client on the registry, or a registry port.
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
    port = as_port(registry)
    version = port.version(name, version_or_alias)
    current_number = port.aliases(name).get(to)
    current = None if current_number is None else port.version(name, current_number)
    return policy.review(
        name,
        version,
        to=to,
        current=current,
        stored=stored_file(port, name, version.version),
        margins=margins or Margins(),
        rollouts=rollouts,
    )


def promote(
    registry: MlflowClient | RegistryPort,
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
        registry: MLflow client on the registry, or a registry port.
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
    policy.check_request(to, force=force, reason=reason)
    port = as_port(registry)
    review = review_promotion(port, name, version_or_alias, to=to, margins=margins, rollouts=rollouts)
    overrode = policy.decide(review, force=force)
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
            port.set_alias(name, previous_alias, review.current_version)
            _set_tags(
                port,
                name,
                review.current_version,
                {"superseded_by": review.version, "superseded_at": when},
                PROMOTION_PREFIX,
            )
            _append_event(
                port,
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
        port.set_alias(name, to, review.version)
    except RegistryError as exc:
        raise RegistryError(f"cannot move {name}@{to} to version {review.version}: {exc}") from exc
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
    _set_tags(port, name, review.version, audit, PROMOTION_PREFIX)
    _append_event(port, name, review.version, {"event": "promotion", **audit, "to_version": review.version})
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
    registry: MlflowClient | RegistryPort,
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
        registry: MLflow client on the registry, or a registry port.
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
    port = as_port(registry)
    previous_alias = previous_alias_for(alias)
    aliases = port.aliases(name)
    demoted = aliases.get(alias)
    restored = aliases.get(previous_alias)
    if demoted is None:
        raise ModelNotFoundError(f"{name} has no {alias!r} version to roll back")
    if restored is None:
        raise ModelNotFoundError(f"{name} has no {previous_alias!r} version to roll back to")
    restored_version = port.version(name, restored)
    before = restored_version.tags.get(f"{PROMOTION_PREFIX}from_version", "none")
    new_previous = before if before.isdigit() and before not in (demoted, restored) else None
    if new_previous is not None:
        try:
            port.version(name, new_previous)
        except ModelNotFoundError:
            new_previous = None  # that version was deleted since; nothing to step back to
    who = actor or default_actor()
    when = utc_now()
    why = reason.strip() if reason and reason.strip() else "manual rollback"
    withdraw_candidate = aliases.get(CANDIDATE_ALIAS) == demoted
    try:
        port.set_alias(name, alias, restored)
        if new_previous is not None:
            port.set_alias(name, previous_alias, new_previous)
        else:
            port.delete_alias(name, previous_alias)
        if withdraw_candidate:
            port.delete_alias(name, CANDIDATE_ALIAS)
    except RegistryError as exc:
        raise RegistryError(f"cannot roll {name}@{alias} back to version {restored}: {exc}") from exc
    audit = {
        "alias": alias,
        "actor": who,
        "at": when,
        "reason": why,
        "from_version": demoted,
        "to_version": restored,
    }
    _set_tags(port, name, restored, audit, ROLLBACK_PREFIX)
    _set_tags(port, name, demoted, audit, ROLLBACK_PREFIX)
    for version in (restored, demoted):
        _append_event(port, name, version, {"event": "rollback", **audit})
    return RollbackResult(name, alias, demoted, restored, new_previous, who, when, why, withdraw_candidate)


def _set_tags(port: RegistryPort, name: str, version: str, tags: Mapping[str, str], prefix: str) -> None:
    port.set_tags(name, version, {f"{prefix}{key}": value for key, value in tags.items()})


def _append_event(port: RegistryPort, name: str, version: str, event: Mapping[str, str]) -> None:
    """Add one event under the next free ``edgefleet.history.<n>.``; earlier events are never rewritten."""
    _set_tags(port, name, version, event, policy.next_event_prefix(port.version(name, version)))
