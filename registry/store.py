"""Write model versions to the MLflow registry, with metrics, lineage, artifacts and aliases.

This is the port between EdgeFleet and MLflow 3. It uses only MLflow 3 APIs: ``log_model(name=...)``
(a LoggedModel per variant, metrics linked to it), registered-model aliases and model-version tags, never the
deprecated stages. A version is identified by the sha256 of its ONNX bytes plus the config hash and data
fingerprint (``edgefleet.content_hash``): registering the same content again returns the existing version.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.onnx
import onnx
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.errors import ModelNotFoundError, RegistryError
from registry.lineage import Lineage

TAG_PREFIX = "edgefleet."
CONTENT_HASH_TAG = "edgefleet.content_hash"
PROFILE_TAG = "edgefleet.profile"
VARIANT_TAG = "edgefleet.variant"
SHA256_TAG = "edgefleet.sha256"
CANDIDATE_ALIAS = "candidate"
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


def ensure_experiment(tracking_uri: str, name: str, *, artifact_location: str) -> str:
    """Create the experiment with the given artifact location if it does not exist; return its id."""
    client = client_for(tracking_uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def log_teacher(onnx_path: Path, *, metrics: Mapping[str, float], experiment_name: str) -> str:
    """Log the FP32 teacher as an (unregistered) LoggedModel; its id goes into every student's lineage."""
    with _active_run(experiment_name, "teacher"):
        info = mlflow.onnx.log_model(onnx.load(str(onnx_path)), name="teacher", save_as_external_data=False)
        mlflow.log_metrics({f"teacher_{k}": float(v) for k, v in metrics.items()}, model_id=info.model_id)
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
    extra_files: Sequence[Path] = (),
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
        extra_files: Model card and plots, stored with the model's artifacts.
        experiment_name: Experiment used when no run is active.
        alias: Alias to set on the version.

    Returns:
        The registered (or existing) version.

    Raises:
        RegistryError: MLflow refused the registration.
    """
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
    except MlflowException as exc:
        raise RegistryError(f"MLflow refused to register {model_name} ({profile}): {exc}") from exc
    version = str(info.registered_model_version)
    metric_tags = {f"edgefleet.metric.{k}": f"{float(v):.6g}" for k, v in metrics.items()}
    for key, value in {**tags, **metric_tags}.items():
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


def get_version(name: str, version_or_alias: str, *, tracking_uri: str | None = None) -> ModelVersion:
    """Look up a version by number or alias.

    Raises:
        ModelNotFoundError: No such model, version or alias.
    """
    client = client_for(tracking_uri)
    try:
        if version_or_alias.isdigit():
            return client.get_model_version(name, version_or_alias)
        return client.get_model_version_by_alias(name, version_or_alias)
    except MlflowException as exc:
        raise ModelNotFoundError(f"{name} has no version or alias {version_or_alias!r}") from exc


def version_metrics(version: ModelVersion) -> dict[str, float]:
    """The metrics recorded on a version (from its ``edgefleet.metric.*`` tags)."""
    prefix = "edgefleet.metric."
    return {k[len(prefix) :]: float(v) for k, v in version.tags.items() if k.startswith(prefix)}


def tracking_uri_from_env() -> str | None:
    """``MLFLOW_TRACKING_URI`` if set, else None (the caller then uses the stack's or embedded URI)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def use_tracking_uri(uri: str) -> None:
    """Point this process's MLflow client (tracking and registry) at ``uri``."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
