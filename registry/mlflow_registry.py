"""The MLflow adapter of the registry port (``registry.port.RegistryPort``): aliases and model-version tags
on an explicit ``MlflowClient``, never the deprecated stages. MLflow's exceptions become
:class:`~registry.errors.RegistryError` here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.errors import RegistryError
from registry.port import VersionRecord
from registry.store import model_aliases, resolve_version
from registry.tags import MODEL_FILE

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


class MlflowRegistry:
    """:class:`~registry.port.RegistryPort` on an MLflow registry.

    Args:
        client: MLflow client on the registry (``registry.store.client_for``).
    """

    def __init__(self, client: MlflowClient) -> None:
        self.client = client

    def version(self, name: str, version_or_alias: str) -> VersionRecord:
        """See :meth:`RegistryPort.version`."""
        found = resolve_version(self.client, name, version_or_alias)
        return _record(found)

    def aliases(self, name: str) -> dict[str, str]:
        """See :meth:`RegistryPort.aliases`."""
        return model_aliases(self.client, name)

    def download_model_file(self, name: str, version: str, folder: Path) -> Path:
        """See :meth:`RegistryPort.download_model_file`: from the version's storage location (a local store
        hands back its own copy; a remote one downloads the single file)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            location = self.client.get_model_version_download_uri(name, version)
            return Path(get_artifact_repository(location).download_artifacts(MODEL_FILE, str(folder)))
        except MlflowException as exc:
            raise RegistryError(str(exc)) from exc

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """See :meth:`RegistryPort.set_alias`."""
        try:
            self.client.set_registered_model_alias(name, alias, version)
        except MlflowException as exc:
            raise RegistryError(
                f"MLflow refused to point {name}@{alias} at version {version}: {exc}"
            ) from exc

    def delete_alias(self, name: str, alias: str) -> None:
        """See :meth:`RegistryPort.delete_alias`."""
        try:
            self.client.delete_registered_model_alias(name, alias)
        except MlflowException as exc:
            raise RegistryError(f"MLflow refused to delete {name}@{alias}: {exc}") from exc

    def set_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """See :meth:`RegistryPort.set_tags`."""
        try:
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, value)
        except MlflowException as exc:
            raise RegistryError(f"MLflow refused to tag {name} version {version}: {exc}") from exc


def _record(version: ModelVersion) -> VersionRecord:
    return VersionRecord(
        name=str(version.name),
        version=str(version.version),
        tags=dict(version.tags or {}),
    )
