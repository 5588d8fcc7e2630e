"""Pure reads of a registered model version that the read-only commands need, with no MLflow import.

Tag names live in ``registry/tags.py`` and the promotion policy in ``registry/policy.py``; this module adds
what `models list/show` need on top, for anything shaped like MLflow's ``ModelVersion``
(:class:`VersionLike`): MLflow's own entities, or the records of ``registry/readmodel.py``, which those two
commands use so that they never import MLflow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar

from registry.tags import PROFILE_TAG


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


V = TypeVar("V", bound=VersionLike)


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
