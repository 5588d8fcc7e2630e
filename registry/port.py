"""The registry port: the few operations promotion and rollback need from a model registry, behind one
small interface (``models list/show`` still read MLflow entities through ``registry.store``).

``registry.mlflow_registry.MlflowRegistry`` is the adapter onto MLflow (aliases and model-version tags);
``registry.memory.InMemoryRegistry`` is a dict-backed fake for unit tests. The promotion policy
(``registry.policy``) never sees either: ``registry.promotion`` reads through the port and hands it plain
records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class VersionRecord:
    """One model version as the port returns it: its model, number and tags."""

    name: str
    version: str
    tags: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class RegistryPort(Protocol):
    """What EdgeFleet asks of a model registry. Every failure is a :class:`~registry.errors.RegistryError`."""

    def version(self, name: str, version_or_alias: str) -> VersionRecord:
        """The version with this number, or the one holding this alias.

        Raises:
            ModelNotFoundError: No such model, version or alias.
        """
        ...

    def aliases(self, name: str) -> dict[str, str]:
        """Alias → version number.

        Raises:
            ModelNotFoundError: No registered model called ``name``.
        """
        ...

    def download_model_file(self, name: str, version: str, folder: Path) -> Path:
        """Copy the version's stored ``model.onnx`` into ``folder``; return its path.

        Raises:
            RegistryError: The registry cannot hand the file out.
            OSError: It cannot be written into ``folder``.
        """
        ...

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``.

        Raises:
            RegistryError: The registry refused.
        """
        ...

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias``.

        Raises:
            RegistryError: The registry refused.
        """
        ...

    def set_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Set (overwrite) tags on a version.

        Raises:
            RegistryError: The registry refused.
        """
        ...
