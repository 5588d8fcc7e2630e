"""A read-only view of MLflow's model registry tables, for the commands that only read (`models list/show`).

Why: `import mlflow` alone costs about 1 s on this project's 2-core machine (pandas, FastAPI and pydantic
schemas for GenAI, every tracking entity), and MLflow's SQL registry store another 0.45 s (SQLAlchemy ORM
models of every tracking table, alembic, cryptography); `edgefleet models list` spent 2.1–2.5 s, nearly all
of it there. This module answers the same questions with four indexed SELECTs through SQLAlchemy Core and
never imports MLflow: list/show then take about 0.4 s (``bench/cli_latency.py`` prints both paths).

It is deliberately narrow and conservative:

- Only SQL tracking URIs (the embedded SQLite store, PostgreSQL, MySQL), only MLflow's single-tenant mode
  (no ``MLFLOW_ENABLE_WORKSPACES`` / ``MLFLOW_WORKSPACE``), and only a database whose schema revision is one
  this module was checked against (``KNOWN_SCHEMA_REVISIONS``; a unit test pins it to the installed MLflow's
  migration head). Anything else (``http(s)://`` servers, Databricks, an upgraded schema) gets ``None`` from
  :func:`open_reader`, and the caller uses MLflow's own client as before.
- It reads what MLflow's ``SqlAlchemyStore`` reads, with the same rules: internally deleted versions
  (``current_stage = 'Deleted_Internal'``) are invisible, a version's download location is its
  ``storage_location`` or else its ``source``, the workspace is ``default``.
- It never writes. Promotion, rollback and registration stay on MLflow's client.

An integration test renders `models list/show` through both paths on the same store and compares the output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from registry.errors import ModelNotFoundError, RegistryError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

# MLflow's alembic head revisions this reader was checked against (tests/unit/registry pins the installed
# MLflow's head to this set, so an MLflow upgrade fails a test instead of silently reading a changed schema).
KNOWN_SCHEMA_REVISIONS = frozenset({"dc11669786a5"})
DELETED_STAGE = (
    "Deleted_Internal"  # mlflow.entities.model_registry.model_version_stages.STAGE_DELETED_INTERNAL
)
PROMPT_TAG = "mlflow.prompt.is_prompt"  # mlflow.prompt.constants.IS_PROMPT_TAG_KEY: prompts are not models
WORKSPACE = "default"  # mlflow.utils.workspace_utils.DEFAULT_WORKSPACE_NAME (single-tenant mode)
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_COLUMNS = (
    "name, version, creation_time, last_updated_time, description, user_id, current_stage, source, "
    "run_id, status, status_message, run_link, storage_location"
)


@dataclass(frozen=True)
class VersionRecord:
    """One model version, with the attributes of ``mlflow.entities.model_registry.ModelVersion`` that
    EdgeFleet's views read (same names, same types), plus its download location."""

    name: str
    version: int
    creation_timestamp: int | None
    last_updated_timestamp: int | None
    description: str | None
    user_id: str | None
    current_stage: str | None
    source: str | None
    run_id: str | None
    status: str | None
    status_message: str | None
    run_link: str | None
    storage_location: str | None
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    model_id: str | None = None

    @property
    def download_uri(self) -> str:
        """Where the version's files are (``get_model_version_download_uri``)."""
        return self.storage_location or self.source or ""


def _sql_uri(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in _SQL_SCHEMES


def _workspaces_in_use() -> bool:
    enabled = os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in {"1", "true", "yes"}
    return enabled or bool(os.environ.get("MLFLOW_WORKSPACE", "").strip())


class SqlRegistryReader:
    """Read-only queries on MLflow's registry tables (``registered_models``, ``model_versions``,
    ``model_version_tags``, ``registered_model_aliases``) through SQLAlchemy Core."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection; a database error (locked, corrupt, gone) becomes one clear ``RegistryError``."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self._engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise RegistryError(f"cannot read the MLflow registry at {self._engine.url}: {exc}") from exc

    def schema_revision(self) -> str | None:
        from sqlalchemy import text

        try:
            with self._connect() as conn:
                row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except RegistryError:
            return None
        return str(row[0]) if row else None

    def _model_exists(self, conn: Connection, name: str) -> bool:
        from sqlalchemy import text

        found = conn.execute(
            text("SELECT 1 FROM registered_models WHERE workspace = :ws AND name = :name"),
            {"ws": WORKSPACE, "name": name},
        ).first()
        return found is not None

    def _records(self, conn: Connection, where: str, params: Mapping[str, object]) -> list[VersionRecord]:
        from sqlalchemy import text

        args = {"ws": WORKSPACE, "deleted": DELETED_STAGE, **params}
        rows = conn.execute(
            text(
                f"SELECT {_COLUMNS} FROM model_versions "  # noqa: S608 (fixed column list, bound values)
                f"WHERE workspace = :ws AND current_stage != :deleted {where}"
            ),
            args,
        ).all()
        if not rows:
            return []
        names = sorted({str(row.name) for row in rows})
        tags: dict[tuple[str, str], dict[str, str]] = {}
        aliases: dict[tuple[str, str], list[str]] = {}
        for model in names:
            for key, value, version in conn.execute(
                text(
                    "SELECT key, value, version FROM model_version_tags "
                    "WHERE workspace = :ws AND name = :name"
                ),
                {"ws": WORKSPACE, "name": model},
            ):
                tags.setdefault((model, str(version)), {})[str(key)] = "" if value is None else str(value)
            for alias, version in conn.execute(
                text(
                    "SELECT alias, version FROM registered_model_aliases "
                    "WHERE workspace = :ws AND name = :name ORDER BY alias"
                ),
                {"ws": WORKSPACE, "name": model},
            ):
                aliases.setdefault((model, str(version)), []).append(str(alias))
        records = []
        for row in rows:
            key = (str(row.name), str(row.version))
            version_tags = tags.get(key, {})
            if version_tags.get(PROMPT_TAG, "").lower() == "true":
                continue
            records.append(
                VersionRecord(
                    name=key[0],
                    version=int(row.version),
                    creation_timestamp=row.creation_time,
                    last_updated_timestamp=row.last_updated_time,
                    description=row.description,
                    user_id=row.user_id,
                    current_stage=row.current_stage,
                    source=row.source,
                    run_id=row.run_id,
                    status=row.status,
                    status_message=row.status_message,
                    run_link=row.run_link,
                    storage_location=row.storage_location,
                    tags=version_tags,
                    aliases=tuple(aliases.get(key, ())),
                )
            )
        return records

    def versions(self, name: str) -> list[VersionRecord]:
        """Every version of ``name``, newest first.

        Raises:
            ModelNotFoundError: No registered model called ``name``.
        """
        with self._connect() as conn:
            records = self._records(conn, "AND name = :name", {"name": name})
            if not records and not self._model_exists(conn, name):
                raise ModelNotFoundError(f"no registered model called {name!r}")
        return sorted(records, key=lambda r: r.version, reverse=True)

    def all_versions(self) -> list[VersionRecord]:
        """Every version of every registered model."""
        with self._connect() as conn:
            return self._records(conn, "", {})

    def aliases(self, name: str) -> dict[str, str]:
        """Alias → version number of one registered model.

        Raises:
            ModelNotFoundError: No registered model called ``name``.
        """
        from sqlalchemy import text

        with self._connect() as conn:
            if not self._model_exists(conn, name):
                raise ModelNotFoundError(f"no registered model called {name!r}")
            rows = conn.execute(
                text(
                    "SELECT alias, version FROM registered_model_aliases "
                    "WHERE workspace = :ws AND name = :name"
                ),
                {"ws": WORKSPACE, "name": name},
            ).all()
        return {str(alias): str(version) for alias, version in rows}

    def resolve(self, name: str, version_or_alias: str) -> VersionRecord:
        """A version of ``name`` by number or alias.

        Raises:
            ModelNotFoundError: No such registered model, version or alias.
        """
        missing = ModelNotFoundError(f"{name} has no version or alias {version_or_alias!r}")
        with self._connect() as conn:
            if version_or_alias.isdigit():
                number = int(version_or_alias)
            else:
                from sqlalchemy import text

                row = conn.execute(
                    text(
                        "SELECT version FROM registered_model_aliases "
                        "WHERE workspace = :ws AND name = :name AND alias = :alias"
                    ),
                    {"ws": WORKSPACE, "name": name, "alias": version_or_alias},
                ).first()
                if row is None:
                    raise missing
                number = int(row[0])
            records = self._records(
                conn, "AND name = :name AND version = :version", {"name": name, "version": number}
            )
        if not records:
            raise missing
        return records[0]

    def artifacts(self, record: VersionRecord) -> list[tuple[str, int | None]] | None:
        """Every file stored with a version, as (relative path, size), sorted; ``None`` when its location is
        not a local folder (the caller then lists it through MLflow's artifact repository).

        Raises:
            RegistryError: A local location that cannot be listed.
        """
        location = record.download_uri
        parsed = urlparse(location)
        if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
            root = Path(unquote(parsed.path))
        elif parsed.scheme == "" and location.startswith("/"):
            root = Path(location)
        else:
            return None
        if not root.is_dir():
            raise RegistryError(
                f"cannot list the artifacts of {record.name} version {record.version}: no folder at {root}"
            )
        files: list[tuple[str, int | None]] = []
        try:
            for path in root.rglob("*"):
                if path.is_file():
                    files.append((path.relative_to(root).as_posix(), path.stat().st_size))
        except OSError as exc:
            raise RegistryError(
                f"cannot list the artifacts of {record.name} version {record.version}: {exc}"
            ) from exc
        return sorted(files)


def open_reader(uri: str) -> SqlRegistryReader | None:
    """A fast reader for ``uri``, or ``None`` when MLflow's own client should read it (see the module doc)."""
    if os.environ.get("EDGEFLEET_REGISTRY_FAST_READ", "1").strip().lower() in {"0", "false", "no"}:
        return None
    if not _sql_uri(uri) or _workspaces_in_use():
        return None
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # SQLite would create an empty database; the caller reports the missing store
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    from sqlalchemy.pool import NullPool

    try:
        engine = create_engine(uri, poolclass=NullPool)
    except (ArgumentError, NoSuchModuleError, ImportError):
        return None
    reader = SqlRegistryReader(engine)
    if reader.schema_revision() not in KNOWN_SCHEMA_REVISIONS:
        engine.dispose()
        return None
    return reader
