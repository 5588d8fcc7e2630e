"""Read side of the registry for the release pipeline and ``edgefleet trace``: fetch a model version's ONNX
artifact and facts (tags, lineage, run), and write release facts back as model-version tags.

Sits beside ``registry.store`` (the write side of training) and is, like it, the only place that talks to
MLflow. Everything returned is plain data (:class:`FetchedModel`, :class:`VersionFacts`), so steps and the
trace command never see an MLflow object.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlflow.artifacts
from mlflow.exceptions import MlflowException

from registry.errors import ModelNotFoundError, RegistryError
from registry.store import (
    PROFILE_TAG,
    SHA256_TAG,
    client_for,
    file_sha256,
    logged_model_id,
    model_aliases,
    resolve_version,
)

LINEAGE_PREFIX = "edgefleet.lineage."
RELEASE_PREFIX = "edgefleet.release."
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class VersionFacts:
    """What the registry knows about one model version, read from MLflow each time (never cached).

    Attributes:
        name: Registered model name.
        version: Version number.
        model_uri: ``models:/NAME/VERSION``.
        run_id: The MLflow run that registered it.
        model_id: The LoggedModel id behind it (None if MLflow does not say).
        profile: The hardware profile it was selected for.
        sha256: sha256 of its ONNX bytes, as recorded at registration.
        aliases: Aliases of the registered model that point at this version.
        lineage: ``edgefleet.lineage.*`` tags without the prefix (data_fingerprint, git_commit, ...).
        tags: Every tag of the version.
    """

    name: str
    version: str
    model_uri: str
    run_id: str
    model_id: str | None
    profile: str
    sha256: str
    aliases: tuple[str, ...]
    lineage: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def data_fingerprint(self) -> str:
        """The fingerprint of the data the version was trained on ("unknown" when not recorded)."""
        return self.lineage.get("data_fingerprint", "unknown")


@dataclass(frozen=True)
class FetchedModel:
    """A model version's facts plus its ONNX file on local disk (checked against the registered sha256)."""

    facts: VersionFacts
    onnx_path: Path


@dataclass(frozen=True)
class RunFacts:
    """The training run behind a version."""

    run_id: str
    experiment_id: str
    run_name: str
    status: str
    start_time_ms: int | None
    params: Mapping[str, str]


@dataclass(frozen=True)
class TeacherFacts:
    """The teacher LoggedModel named in a version's lineage."""

    model_id: str
    name: str
    metrics: Mapping[str, float]


def version_facts(name: str, version_or_alias: str, *, tracking_uri: str | None = None) -> VersionFacts:
    """Read one version (by number or alias) and its tags from MLflow.

    Args:
        name: Registered model name.
        version_or_alias: Version number or alias, e.g. ``production``.
        tracking_uri: MLflow tracking/registry URI; the process's configured one when None.

    Returns:
        The version's facts.

    Raises:
        ModelNotFoundError: No such model, version or alias.
    """
    client = client_for(tracking_uri)
    version = resolve_version(client, name, version_or_alias)
    number = str(version.version)
    aliases = tuple(sorted(a for a, v in model_aliases(client, name).items() if v == number))
    tags = {str(k): str(v) for k, v in (version.tags or {}).items()}
    return VersionFacts(
        name=name,
        version=number,
        model_uri=f"models:/{name}/{number}",
        run_id=str(version.run_id or ""),
        model_id=logged_model_id(version),
        profile=tags.get(PROFILE_TAG, "unknown"),
        sha256=tags.get(SHA256_TAG, ""),
        aliases=aliases,
        lineage={k.removeprefix(LINEAGE_PREFIX): v for k, v in tags.items() if k.startswith(LINEAGE_PREFIX)},
        tags=tags,
    )


def fetch_model(
    name: str, version_or_alias: str, destination: Path, *, tracking_uri: str | None = None
) -> FetchedModel:
    """Download a version's ``model.onnx`` into ``destination`` and check it against the registered sha256.

    Args:
        name: Registered model name.
        version_or_alias: Version number or alias, e.g. ``production``.
        destination: Folder that receives ``<name>-<version>.onnx`` (created if missing).
        tracking_uri: MLflow tracking/registry URI; the process's configured one when None.

    Returns:
        The facts and the local ONNX path.

    Raises:
        ModelNotFoundError: No such model, version or alias.
        RegistryError: The artifact cannot be downloaded, holds no ``model.onnx``, or its bytes do not
            match the ``edgefleet.sha256`` tag (a tampered or half-written artifact store).
    """
    facts = version_facts(name, version_or_alias, tracking_uri=tracking_uri)
    destination.mkdir(parents=True, exist_ok=True)
    client = client_for(tracking_uri)
    if facts.model_id is None:
        raise RegistryError(f"{facts.model_uri} has no logged model to download")
    with tempfile.TemporaryDirectory(prefix="edgefleet-fetch-", dir=destination) as scratch:
        # Download from the LoggedModel's own artifact location, not through ``models:/``: MLflow's
        # models:/ repository resolves the registry from the process-global URI, not the one passed in,
        # and would silently open (and create) ./mlflow.db.
        try:
            location = client.get_logged_model(facts.model_id).artifact_location
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=location, dst_path=scratch, tracking_uri=client.tracking_uri
                )
            )
        except (MlflowException, OSError) as exc:
            raise RegistryError(f"cannot download {facts.model_uri}: {exc}") from exc
        found = sorted(local.rglob(MODEL_FILE)) if local.is_dir() else [local]
        if not found:
            raise RegistryError(f"{facts.model_uri} holds no {MODEL_FILE}")
        target = destination / f"{name}-{facts.version}.onnx"
        # Same-folder move, so the final name only ever holds a complete file.
        staged = destination / f".{target.name}.part"
        shutil.copyfile(found[0], staged)
        staged.replace(target)
    digest = file_sha256(target)
    if facts.sha256 and digest != facts.sha256:
        target.unlink(missing_ok=True)
        raise RegistryError(
            f"{facts.model_uri}: downloaded model.onnx has sha256 {digest[:12]}…, "
            f"the registry recorded {facts.sha256[:12]}…"
        )
    return FetchedModel(facts=facts, onnx_path=target)


def tag_version(name: str, version: str, tags: Mapping[str, str], *, tracking_uri: str | None = None) -> None:
    """Write ``tags`` on a model version (the release pipeline records release and rollout ids this way).

    Raises:
        ModelNotFoundError: No such model or version.
        RegistryError: MLflow refused a tag.
    """
    client = client_for(tracking_uri)
    resolve_version(client, name, version)
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    except MlflowException as exc:
        raise RegistryError(f"MLflow refused to tag {name} version {version}: {exc}") from exc


def run_facts(run_id: str, *, tracking_uri: str | None = None) -> RunFacts:
    """Read the MLflow run that registered a version.

    Raises:
        ModelNotFoundError: No such run.
    """
    client = client_for(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ModelNotFoundError(f"no MLflow run {run_id!r}") from exc
    return RunFacts(
        run_id=run.info.run_id,
        experiment_id=str(run.info.experiment_id),
        run_name=str(run.info.run_name or ""),
        status=str(run.info.status),
        start_time_ms=run.info.start_time,
        params={str(k): str(v) for k, v in run.data.params.items()},
    )


def teacher_facts(model_id: str, *, tracking_uri: str | None = None) -> TeacherFacts:
    """Read the teacher LoggedModel named by a version's ``edgefleet.lineage.teacher_model_id``.

    Raises:
        ModelNotFoundError: No such LoggedModel.
    """
    client = client_for(tracking_uri)
    try:
        logged = client.get_logged_model(model_id)
    except MlflowException as exc:
        raise ModelNotFoundError(f"no logged model {model_id!r}") from exc
    metrics = {str(m.key): float(m.value) for m in (logged.metrics or [])}
    return TeacherFacts(model_id=str(logged.model_id), name=str(logged.name), metrics=metrics)
