"""What EdgeFleet keeps on a registered model version, and the pure reads of it. No MLflow import.

A version's EdgeFleet data lives in its tags (``edgefleet.*``): profile, variant, content and file hashes,
metrics, gate limits, and the append-only promotion/rollback history. The functions here read those tags
from anything shaped like MLflow's ``ModelVersion`` (:class:`VersionLike`): MLflow's own entities, or the
records of ``registry/readmodel.py``, which `models list/show` use so that they never import MLflow.
``registry/store.py`` (writes) and ``registry/promotion.py`` (policy) build on these names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar

from ml.errors import GateError
from ml.gates import GateProfile, GateResult, check_gates

TAG_PREFIX = "edgefleet."
CONTENT_HASH_TAG = "edgefleet.content_hash"
PROFILE_TAG = "edgefleet.profile"
VARIANT_TAG = "edgefleet.variant"
SHA256_TAG = "edgefleet.sha256"
WEIGHTS_TAG = "edgefleet.torch_weights"
"""Set on versions (and teacher LoggedModels) that store torch weights; the value is their artifact folder."""
CANDIDATE_ALIAS = "candidate"
PRODUCTION_ALIAS = "production"
PREVIOUS_ALIAS = "previous"
METRIC_PREFIX = "edgefleet.metric."
GATE_PREFIX = "edgefleet.gate."
PROMOTION_PREFIX = "edgefleet.promotion."
ROLLBACK_PREFIX = "edgefleet.rollback."
HISTORY_PREFIX = "edgefleet.history."

# Names of the promotion checks, as they appear in the refusal table and the forced-promotion audit tag.
MARGIN_ACCURACY_CHECK = "accuracy_drop_vs_production"
MARGIN_P99_CHECK = "p99_ms_increase_vs_production"
NO_GATES_CHECK = "gate_tags_present"
ARTIFACT_SIZE_CHECK = "max_size_kb_of_the_stored_file"
ARTIFACT_SHA_CHECK = "sha256_as_registered"
OTA_HISTORY_CHECK = "rollout_not_aborted"
#: Checks whose "measured" cell is a sentence (kept in ``GateResult.metric``) rather than a number.
TEXT_CHECKS = frozenset({ARTIFACT_SHA_CHECK, OTA_HISTORY_CHECK})


# Promotion margins (registry/promotion.py applies them; the CLI shows them as option defaults).
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


class VersionLike(Protocol):
    """The attributes of ``mlflow.entities.model_registry.ModelVersion`` that EdgeFleet reads."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int | str: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def source(self) -> str | None: ...
    @property
    def creation_timestamp(self) -> int | None: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...


def version_metrics(version: VersionLike) -> dict[str, float]:
    """The metrics recorded on a version (from its ``edgefleet.metric.*`` tags)."""
    return {k[len(METRIC_PREFIX) :]: float(v) for k, v in version.tags.items() if k.startswith(METRIC_PREFIX)}


def version_gates(version: VersionLike) -> dict[str, float]:
    """The gate limits recorded on a version at registration (its ``edgefleet.gate.*`` tags).

    A tag whose value is not a number is skipped: ``GateProfile.from_config`` then reports the profile as
    incomplete rather than this helper crashing on a hand-edited tag.
    """
    gates: dict[str, float] = {}
    for key, value in version.tags.items():
        if not key.startswith(GATE_PREFIX):
            continue
        try:
            gates[key[len(GATE_PREFIX) :]] = float(value)
        except ValueError:
            continue
    return gates


def logged_model_id(version: VersionLike) -> str | None:
    """The LoggedModel id behind a version.

    The SQL registry does not always fill ``ModelVersion.model_id``; the source ``models:/m-<id>`` does.
    """
    model_id = getattr(version, "model_id", None)
    if model_id:
        return str(model_id)
    source = str(version.source or "")
    if source.startswith("models:/m-"):
        return source.removeprefix("models:/")
    return None


def gate_results(version: VersionLike) -> tuple[GateResult, ...]:
    """Re-check a version's own gates (its ``edgefleet.gate.*`` tags) on its recorded metrics.

    A version registered without gate tags cannot be re-checked; it gets one failing
    ``gate_tags_present`` row so that it is refused unless forced, instead of passing vacuously.
    """
    profile_name = version.tags.get(PROFILE_TAG, "unknown")
    metrics = version_metrics(version)
    try:
        profile = GateProfile.from_config(profile_name, version_gates(version))
    except GateError:
        return (GateResult(NO_GATES_CHECK, "edgefleet.gate.* tags", None, 1.0, "≥", False),)
    return tuple(check_gates(profile, metrics, metrics.get("teacher_accuracy")))


def history_events(version: VersionLike) -> list[dict[str, str]]:
    """The version's audit events (``edgefleet.history.<n>.*`` tags), oldest first, each with its ``n``."""
    events: dict[int, dict[str, str]] = {}
    for key, value in version.tags.items():
        if not key.startswith(HISTORY_PREFIX):
            continue
        number, _, field = key[len(HISTORY_PREFIX) :].partition(".")
        if number.isdigit() and field:
            events.setdefault(int(number), {"n": number})[field] = value
    return [events[n] for n in sorted(events)]


V = TypeVar("V", bound=VersionLike)


def newest_first(versions: Iterable[V]) -> list[V]:
    """Versions sorted by number, highest first."""
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def group_edgefleet_versions(versions: Iterable[V]) -> dict[str, list[V]]:
    """Name → versions (newest first) of every model holding an EdgeFleet version, names sorted.

    A model counts when at least one of its versions has the ``edgefleet.profile`` tag (MLflow's
    model-version tag filters cannot test "tag exists", so the filter is applied here).
    """
    grouped: dict[str, list[V]] = {}
    for version in versions:
        grouped.setdefault(str(version.name), []).append(version)
    return {
        name: newest_first(found)
        for name, found in sorted(grouped.items())
        if any(PROFILE_TAG in v.tags for v in found)
    }
