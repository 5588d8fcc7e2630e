"""An in-memory model registry (``registry.port.RegistryPort``) for unit tests of promotion and rollback.

Versions, aliases, tags and stored files live in dicts; errors are the ones the MLflow adapter raises
(``ModelNotFoundError`` for an unknown model, version or alias). ``refuse_writes`` makes every write fail,
the way a registry that went read-only would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import ModelNotFoundError, RegistryError
from registry.port import VersionRecord
from registry.tags import MODEL_FILE


@dataclass
class InMemoryRegistry:
    """A registry in dicts: name → version → tags, name → alias → version, (name, version) → file bytes."""

    tags: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    alias_table: dict[str, dict[str, str]] = field(default_factory=dict)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    refuse_writes: bool = False

    def add_version(self, name: str, tags: Mapping[str, str], model: bytes | None = None) -> str:
        """Register a new version (numbered from 1) with ``tags`` and, if given, its stored file."""
        versions = self.tags.setdefault(name, {})
        self.alias_table.setdefault(name, {})
        number = str(len(versions) + 1)
        versions[number] = dict(tags)
        if model is not None:
            self.files[(name, number)] = model
        return number

    def _model(self, name: str) -> dict[str, dict[str, str]]:
        if name not in self.tags:
            raise ModelNotFoundError(f"no registered model called {name!r}")
        return self.tags[name]

    def version(self, name: str, version_or_alias: str) -> VersionRecord:
        """See :meth:`RegistryPort.version`."""
        versions = self._model(name)
        number = (
            version_or_alias if version_or_alias.isdigit() else self.alias_table[name].get(version_or_alias)
        )
        if number is None or number not in versions:
            raise ModelNotFoundError(f"{name} has no version or alias {version_or_alias!r}")
        return VersionRecord(name, number, dict(versions[number]))

    def aliases(self, name: str) -> dict[str, str]:
        """See :meth:`RegistryPort.aliases`."""
        self._model(name)
        return dict(self.alias_table[name])

    def download_model_file(self, name: str, version: str, folder: Path) -> Path:
        """See :meth:`RegistryPort.download_model_file`."""
        data = self.files.get((name, version))
        if data is None:
            raise RegistryError(f"{name} version {version} stores no {MODEL_FILE}")
        path = folder / MODEL_FILE
        path.write_bytes(data)
        return path

    def _write(self, what: str) -> None:
        if self.refuse_writes:
            raise RegistryError(f"the registry refused to {what}: read-only")

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """See :meth:`RegistryPort.set_alias`."""
        self._write(f"point {name}@{alias} at version {version}")
        if version not in self._model(name):
            raise RegistryError(f"{name} has no version {version}")
        self.alias_table[name][alias] = version

    def delete_alias(self, name: str, alias: str) -> None:
        """See :meth:`RegistryPort.delete_alias`."""
        self._write(f"delete {name}@{alias}")
        self._model(name)
        self.alias_table[name].pop(alias, None)

    def set_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """See :meth:`RegistryPort.set_tags`."""
        self._write(f"tag {name} version {version}")
        versions = self._model(name)
        if version not in versions:
            raise RegistryError(f"{name} has no version {version}")
        versions[version].update(tags)
