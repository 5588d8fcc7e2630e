"""Read side of the registry for the release pipeline, ``edgefleet trace`` and fine-tunes: fetch a model
version's ONNX artifact and facts (tags, lineage, run), fetch the torch weights it was made from (and its
teacher's) for ``init_from``, and write release facts back as model-version tags.

Sits beside ``registry.store`` (the write side of training) and is, like it, the only place that talks to
MLflow. Everything returned is plain data (:class:`FetchedModel`, :class:`VersionFacts`), so steps and the
trace command never see an MLflow object.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlflow.artifacts
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml.files import copy_atomic, file_sha256
from registry.errors import ModelNotFoundError, RegistryError, WeightsNotFoundError
from registry.store import (
    PROFILE_TAG,
    SHA256_TAG,
    WEIGHTS_DIR,
    WEIGHTS_TAG,
    client_for,
    logged_model_id,
    model_aliases,
    resolve_version,
)

LINEAGE_PREFIX = "edgefleet.lineage."
RELEASE_PREFIX = "edgefleet.release."
MODEL_FILE = "model.onnx"
# models:/NAME/VERSION or models:/NAME@ALIAS (MLflow's own spellings; run-relative and m-<id> URIs are not
# registry versions, so they cannot be fine-tuned from).
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[A-Za-z0-9_-]+))$")


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
        # Atomic copy, so the final name only ever holds a complete file.
        copy_atomic(found[0], target)
    digest = file_sha256(target)
    if facts.sha256 and digest != facts.sha256:
        target.unlink(missing_ok=True)
        raise RegistryError(
            f"{facts.model_uri}: downloaded model.onnx has sha256 {digest[:12]}…, "
            f"the registry recorded {facts.sha256[:12]}…"
        )
    return FetchedModel(facts=facts, onnx_path=target)


@dataclass(frozen=True)
class FetchedWeights:
    """The torch weights a model version was made from, and its teacher's, in one local folder.

    Attributes:
        facts: The version, as resolved (``facts.model_uri`` is ``models:/NAME/VERSION``).
        folder: Holds the files of the version's ``torch/`` artifact folder and of its teacher's.
        teacher_model_id: The teacher LoggedModel the teacher's files came from.
    """

    facts: VersionFacts
    folder: Path
    teacher_model_id: str


def parse_model_uri(uri: str) -> tuple[str, str]:
    """Split ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` into name and version-or-alias.

    Raises:
        RegistryError: Any other string.
    """
    match = _MODEL_URI.match(uri.strip())
    if match is None:
        raise RegistryError(
            f"{uri!r} is not a registry model URI: use models:/NAME/VERSION or models:/NAME@ALIAS"
        )
    return match["name"], match["version"] or match["alias"]


def _download_dir(client: MlflowClient, model_id: str, destination: Path, *, what: str) -> list[Path]:
    """Copy the files of a LoggedModel's ``torch/`` folder into ``destination``; return their paths."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-weights-", dir=destination) as scratch:
        try:
            location = client.get_logged_model(model_id).artifact_location
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{location.rstrip('/')}/{WEIGHTS_DIR}",
                    dst_path=scratch,
                    tracking_uri=client.tracking_uri,
                )
            )
        except (MlflowException, OSError) as exc:
            raise RegistryError(f"cannot download the torch weights of {what}: {exc}") from exc
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
        if not files:
            raise WeightsNotFoundError(f"{what} has an empty {WEIGHTS_DIR}/ folder: no torch weights")
        copied: list[Path] = []
        for file in files:
            target = destination / file.name
            if target.exists():
                raise RegistryError(f"{what}: weights file {file.name} would overwrite another one")
            copy_atomic(file, target)
            copied.append(target)
    return copied


def check_weights(uri: str, *, tracking_uri: str | None = None) -> tuple[VersionFacts, str, str]:
    """Resolve ``uri`` and check that it and its teacher store torch weights, without downloading them.

    A fine-tune calls it first (``fetch_weights`` does, and the ``make run`` demo before it starts the
    pipeline), so a bad ``init_from`` fails at once with a message naming it.

    Args:
        uri: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.
        tracking_uri: MLflow tracking/registry URI; the process's configured one when None.

    Returns:
        The resolved version's facts, its LoggedModel id and its teacher's LoggedModel id.

    Raises:
        RegistryError: ``uri`` is malformed.
        ModelNotFoundError: No such model, version or alias, or its teacher is gone.
        WeightsNotFoundError: The version or its teacher stores no torch weights (e.g. registered before
            EdgeFleet kept them).
    """
    name, version_or_alias = parse_model_uri(uri)
    try:
        facts = version_facts(name, version_or_alias, tracking_uri=tracking_uri)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"cannot fine-tune from {uri}: {exc}") from exc
    where = uri if uri == facts.model_uri else f"{uri} (version {facts.version})"
    model_id = facts.model_id
    if WEIGHTS_TAG not in facts.tags or model_id is None:
        raise WeightsNotFoundError(
            f"cannot fine-tune from {where}: it stores no torch weights (registered before EdgeFleet kept "
            "them, or not by the training pipeline); pick a version trained since, or train from scratch"
        )
    teacher_id = facts.lineage.get("teacher_model_id", "")
    if not teacher_id:
        raise WeightsNotFoundError(f"cannot fine-tune from {where}: its lineage names no teacher model")
    try:
        teacher_tags = client_for(tracking_uri).get_logged_model(teacher_id).tags or {}
    except MlflowException as exc:
        raise ModelNotFoundError(f"cannot fine-tune from {where}: its teacher {teacher_id} is gone") from exc
    if WEIGHTS_TAG not in teacher_tags:
        raise WeightsNotFoundError(
            f"cannot fine-tune from {where}: its teacher {teacher_id} stores no torch weights"
        )
    return facts, model_id, teacher_id


def fetch_weights(uri: str, destination: Path, *, tracking_uri: str | None = None) -> FetchedWeights:
    """Download the torch weights behind ``uri`` and its teacher's into ``destination`` (for ``init_from``).

    Args:
        uri: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.
        destination: An empty folder (created if missing) that receives the files, flat.
        tracking_uri: MLflow tracking/registry URI; the process's configured one when None.

    Returns:
        The resolved version, the folder and the teacher's LoggedModel id.

    Raises:
        RegistryError: ``uri`` is malformed, or MLflow cannot serve the files; the message names ``uri``.
        ModelNotFoundError: No such model, version or alias.
        WeightsNotFoundError: The version (or its teacher) stores no torch weights, e.g. because it was
            registered before EdgeFleet kept them.
    """
    facts, model_id, teacher_id = check_weights(uri, tracking_uri=tracking_uri)
    where = uri if uri == facts.model_uri else f"{uri} (version {facts.version})"
    client = client_for(tracking_uri)
    destination.mkdir(parents=True, exist_ok=True)
    _download_dir(client, model_id, destination, what=where)
    _download_dir(client, teacher_id, destination, what=f"the teacher {teacher_id} of {where}")
    return FetchedWeights(facts=facts, folder=destination, teacher_model_id=teacher_id)


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
