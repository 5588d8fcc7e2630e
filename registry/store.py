"""Write model versions to the MLflow registry, with metrics, lineage, artifacts and aliases.

This is the port between EdgeFleet and MLflow 3. It uses only MLflow 3 APIs: ``log_model(name=...)``
(a LoggedModel per variant, metrics linked to it), registered-model aliases and model-version tags, never the
deprecated stages. A version is identified by the sha256 of its ONNX bytes plus the config hash and data
fingerprint (``edgefleet.content_hash``): registering the same content again returns the existing version.

Beside the ONNX file, a version can keep the torch weights it was made from (``ml.warmstart`` writes them;
this module stores the folder as it is under ``torch/`` in the version's LoggedModel, and the teacher's
under ``torch/`` in the teacher's LoggedModel), so that a later run can fine-tune it (``init_from``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils import workspace_utils

from ml.files import file_sha256
from registry.errors import ModelNotFoundError, RegistryError
from registry.fields import group_edgefleet_versions, newest_first
from registry.fields import logged_model_id as logged_model_id
from registry.lineage import Lineage

# The tag names live in registry.tags (pure, shared with the promotion policy); re-exported for callers.
from registry.tags import CANDIDATE_ALIAS as CANDIDATE_ALIAS
from registry.tags import CONTENT_HASH_TAG as CONTENT_HASH_TAG
from registry.tags import GATE_PREFIX as GATE_PREFIX
from registry.tags import METRIC_PREFIX as METRIC_PREFIX
from registry.tags import PROFILE_TAG as PROFILE_TAG
from registry.tags import SHA256_TAG as SHA256_TAG
from registry.tags import TAG_PREFIX as TAG_PREFIX
from registry.tags import VARIANT_TAG as VARIANT_TAG
from registry.tags import WEIGHTS_DIR as WEIGHTS_DIR
from registry.tags import WEIGHTS_TAG as WEIGHTS_TAG
from registry.tags import gates_from_tags, metrics_from_tags

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

# Declared, not inferred: MLflow's requirement inference loads the model in a subprocess (~10 s each).
PIP_REQUIREMENTS = ["onnx", "onnxruntime"]


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered model version as EdgeFleet sees it."""

    name: str
    version: str
    run_id: str
    model_id: str
    model_uri: str
    created: bool


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    """An MLflow client on ``tracking_uri`` (or the process's configured URI), registry on the same store."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class RegistryFirstClient(MlflowClient):
    """An ``MlflowClient`` that opens the tracking and tracing stores only when a call needs them.

    ``MlflowClient()`` opens the tracking store in its constructor; on a SQL store that imports MLflow's
    whole tracking and GenAI schema (about 0.5 s), which ``edgefleet models list/show/promote`` never use:
    they call only registry methods (and the artifact repository of a version's storage location). The
    attributes below are the ones ``MlflowClient.__init__`` sets in the pinned MLflow (3.17); the two
    stores are built on first use exactly as it builds them, so every other method keeps working.
    """

    def __init__(self, uri: str) -> None:
        # Deliberately not super().__init__(): it is what opens the tracking store eagerly.
        self._lazy_uri = uri
        self._registry_uri = uri
        self._workspace_store_uri = workspace_utils.resolve_workspace_store_uri(None, tracking_uri=uri)
        self._workspace_client = None

    @property
    def tracking_uri(self) -> str:
        """The store's URI, without opening the tracking store."""
        return self._lazy_uri

    # MlflowClient declares these as plain attributes; a cached property builds them on first read.
    @cached_property
    def _tracking_client(self) -> Any:  # type: ignore[override]
        from mlflow.tracking._tracking_service.client import TrackingServiceClient

        return TrackingServiceClient(self._lazy_uri)

    @cached_property
    def _tracing_client(self) -> Any:  # type: ignore[override]
        from mlflow.tracing.client import TracingClient

        return TracingClient(self._lazy_uri)


def registry_client_for(tracking_uri: str) -> MlflowClient:
    """A client for registry reads and alias/tag writes that does not open the tracking store up front."""
    return RegistryFirstClient(tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, *, artifact_location: str) -> str:
    """Create the experiment with the given artifact location if it does not exist; return its id."""
    client = client_for(tracking_uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location))


def registered_name(model_name: str, profile: str) -> str:
    """The MLflow registered-model name of a model family on one target profile: ``{model_name}-{profile}``.

    The one place the name is built: the training pipeline registers under it, and the release pipeline,
    the demo and ``release publish --model-uri`` look versions up by it.
    """
    return f"{model_name}-{profile}"


def content_hash(onnx_path: Path, lineage: Lineage) -> str:
    """Identity of a version: model bytes, configuration and data (not the commit, nor the run id)."""
    key = f"{file_sha256(onnx_path)}:{lineage.config_hash}:{lineage.data_fingerprint}"
    return hashlib.sha256(key.encode()).hexdigest()


def find_by_content(client: MlflowClient, name: str, digest: str) -> ModelVersion | None:
    """The version of ``name`` whose content hash tag is ``digest``, if any."""
    try:
        versions = client.search_model_versions(f"name = '{name}' and tags.`{CONTENT_HASH_TAG}` = '{digest}'")
    except MlflowException:
        return None
    return versions[0] if versions else None


@contextmanager
def _active_run(experiment_name: str, run_name: str) -> Iterator[str]:
    """Reuse the run ZenML's experiment tracker opened for this step, or open one."""
    run = mlflow.active_run()
    if run is not None:
        yield run.info.run_id
        return
    mlflow.set_experiment(experiment_name)
    with mlflow.start_run(run_name=run_name) as started:
        yield started.info.run_id


def _log_weights(client: MlflowClient, model_id: str, weights_dir: Path) -> None:
    """Store ``weights_dir``'s files under ``torch/`` in a LoggedModel and tag it as holding weights."""
    client.log_model_artifacts(model_id, str(weights_dir), artifact_path=WEIGHTS_DIR)
    client.set_logged_model_tags(model_id, {WEIGHTS_TAG: WEIGHTS_DIR})


def log_teacher(
    onnx_path: Path,
    *,
    metrics: Mapping[str, float],
    experiment_name: str,
    weights_dir: Path | None = None,
) -> str:
    """Log the FP32 teacher as an (unregistered) LoggedModel; its id goes into every student's lineage.

    Args:
        onnx_path: The teacher's FP32 ONNX file.
        metrics: Its metrics, logged as ``teacher_*``.
        experiment_name: Experiment used when no run is active.
        weights_dir: A folder of torch weight files to keep under ``torch/`` (for later fine-tunes).

    Raises:
        RegistryError: MLflow refused to store the teacher.
    """
    import mlflow.onnx  # here, not at module level: onnx's import costs ~0.7 s that reads never need
    import onnx

    try:
        with _active_run(experiment_name, "teacher"):
            info = mlflow.onnx.log_model(
                onnx.load(str(onnx_path)), name="teacher", save_as_external_data=False
            )
            mlflow.log_metrics({f"teacher_{k}": float(v) for k, v in metrics.items()}, model_id=info.model_id)
            if weights_dir is not None:
                _log_weights(client_for(), str(info.model_id), weights_dir)
    except MlflowException as exc:
        raise RegistryError(f"MLflow refused to log the teacher: {exc}") from exc
    return str(info.model_id)


def register_variant(
    *,
    model_name: str,
    profile: str,
    variant: str,
    onnx_path: Path,
    parent_path: Path,
    metrics: Mapping[str, float],
    params: Mapping[str, str],
    lineage: Lineage,
    gates: Mapping[str, float] | None = None,
    extra_files: Sequence[Path] = (),
    weights_dir: Path | None = None,
    experiment_name: str = "edgefleet-training",
    alias: str = CANDIDATE_ALIAS,
) -> RegisteredVersion:
    """Register the selected variant of one profile as a model version and point ``alias`` at it.

    Re-registering identical content (same ONNX bytes, config hash and data fingerprint) creates nothing
    and returns the existing version, with ``created=False``.

    Args:
        model_name: Registered model name, e.g. ``edgefleet-digits-cpu-int8-small``.
        profile: Target profile whose gates the variant passed.
        variant: Variant name, e.g. ``student-int8-static``.
        onnx_path: The ONNX file that was benchmarked.
        parent_path: Its FP32 parent, logged beside it.
        metrics: Every metric of the variant (and the teacher's, prefixed).
        params: Training and optimisation parameters.
        lineage: Code, data, config, run and teacher identity.
        gates: The profile's gate limits the variant passed, kept as ``edgefleet.gate.*`` tags so that
            promotion can re-check them without the original config.
        extra_files: Model card and plots, stored with the model's artifacts.
        weights_dir: Torch weights the ONNX file was made from (``ml.warmstart`` files), stored under
            ``torch/`` and announced by the ``edgefleet.torch_weights`` tag, so ``init_from`` can use them.
        experiment_name: Experiment used when no run is active.
        alias: Alias to set on the version.

    Returns:
        The registered (or existing) version.

    Raises:
        RegistryError: MLflow refused the registration.
    """
    import mlflow.onnx
    import onnx

    client = client_for()
    digest = content_hash(onnx_path, lineage)
    existing = find_by_content(client, model_name, digest)
    if existing is not None:
        client.set_registered_model_alias(model_name, alias, existing.version)
        return RegisteredVersion(
            name=model_name,
            version=str(existing.version),
            run_id=str(existing.run_id),
            model_id=str(getattr(existing, "model_id", "") or ""),
            model_uri=f"models:/{model_name}/{existing.version}",
            created=False,
        )
    tags = {
        **lineage.as_tags(),
        CONTENT_HASH_TAG: digest,
        PROFILE_TAG: profile,
        VARIANT_TAG: variant,
        SHA256_TAG: file_sha256(onnx_path),
    }
    try:
        with _active_run(experiment_name, f"register-{profile}") as run_id:
            info = mlflow.onnx.log_model(
                onnx.load(str(onnx_path)),
                name=profile,
                registered_model_name=model_name,
                save_as_external_data=False,
                pip_requirements=PIP_REQUIREMENTS,
                extra_files=[str(parent_path), *(str(p) for p in extra_files)],
                params=dict(params),
                tags=tags,
            )
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, model_id=info.model_id)
            mlflow.log_params({f"{profile}.{k}": v for k, v in params.items()})
            if weights_dir is not None:
                _log_weights(client, str(info.model_id), weights_dir)
                tags[WEIGHTS_TAG] = WEIGHTS_DIR
    except MlflowException as exc:
        raise RegistryError(f"MLflow refused to register {model_name} ({profile}): {exc}") from exc
    version = str(info.registered_model_version)
    metric_tags = {f"{METRIC_PREFIX}{k}": f"{float(v):.6g}" for k, v in metrics.items()}
    gate_tags = {f"{GATE_PREFIX}{k}": repr(float(v)) for k, v in (gates or {}).items()}
    for key, value in {**tags, **metric_tags, **gate_tags}.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, alias, version)
    return RegisteredVersion(
        name=model_name,
        version=version,
        run_id=run_id,
        model_id=str(info.model_id),
        model_uri=f"models:/{model_name}/{version}",
        created=True,
    )


def version_metrics(version: ModelVersion) -> dict[str, float]:
    """The metrics recorded on a version (from its ``edgefleet.metric.*`` tags)."""
    return metrics_from_tags(version.tags)


def tracking_uri_from_env() -> str | None:
    """``MLFLOW_TRACKING_URI`` if set, else None (the caller then uses the stack's or embedded URI)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def use_tracking_uri(uri: str) -> None:
    """Point this process's MLflow client (tracking and registry) at ``uri``."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


# --- Read helpers for ``edgefleet models`` and ``registry.promotion`` (all take an explicit client). ---


def version_gates(version: ModelVersion) -> dict[str, float]:
    """The gate limits recorded on a version at registration (its ``edgefleet.gate.*`` tags)."""
    return gates_from_tags(version.tags)


def resolve_version(client: MlflowClient, name: str, version_or_alias: str) -> ModelVersion:
    """Look up a version of ``name`` by number or alias on an explicit client.

    Raises:
        ModelNotFoundError: No such registered model, version or alias.
    """
    try:
        if version_or_alias.isdigit():
            return client.get_model_version(name, version_or_alias)
        return client.get_model_version_by_alias(name, version_or_alias)
    except MlflowException as exc:
        raise ModelNotFoundError(f"{name} has no version or alias {version_or_alias!r}") from exc


def model_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Alias → version number of one registered model.

    Raises:
        ModelNotFoundError: No registered model called ``name``.
    """
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        raise ModelNotFoundError(f"no registered model called {name!r}") from exc
    return {str(alias): str(version) for alias, version in (registered.aliases or {}).items()}


def _search_versions(client: MlflowClient, filter_string: str | None = None) -> list[ModelVersion]:
    """Every version matching ``filter_string``, all pages, in one query per page of 200."""
    versions: list[ModelVersion] = []
    token: str | None = None
    while True:
        page = client.search_model_versions(filter_string, max_results=200, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def model_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of ``name``, newest first.

    Raises:
        ModelNotFoundError: No registered model called ``name``.
    """
    versions = _search_versions(client, f"name = '{name}'")
    if not versions:
        model_aliases(client, name)  # a clear error for an unknown model instead of an empty list
    return newest_first(versions)


def edgefleet_versions(client: MlflowClient) -> dict[str, list[ModelVersion]]:
    """Name → versions (newest first) of every registered model holding an EdgeFleet version.

    One search over every version (paged), instead of one search to find the names and one more per model.
    """
    return group_edgefleet_versions(_search_versions(client))


def edgefleet_model_names(client: MlflowClient) -> list[str]:
    """Names of the registered models that hold at least one EdgeFleet version (``edgefleet.profile`` tag)."""
    return list(edgefleet_versions(client))


def version_artifacts(client: MlflowClient, version: ModelVersion) -> list[tuple[str, int | None]]:
    """Every file stored with a version, as (relative path, size in bytes), sorted by path.

    Lists the version's storage location (its LoggedModel's artifact folder) through the artifact
    repository, without opening the tracking store and without downloading anything.

    Raises:
        RegistryError: The version has no storage location, or its artifact store cannot be listed.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        location = client.get_model_version_download_uri(str(version.name), str(version.version))
        repository = get_artifact_repository(location)
        files: list[tuple[str, int | None]] = []
        pending: list[str | None] = [None]
        while pending:
            for info in repository.list_artifacts(pending.pop()):
                if info.is_dir:
                    pending.append(info.path)
                else:
                    files.append((str(info.path), info.file_size))
    except (MlflowException, OSError) as exc:
        raise RegistryError(
            f"cannot list the artifacts of {version.name} version {version.version}: {exc}"
        ) from exc
    return sorted(files)
