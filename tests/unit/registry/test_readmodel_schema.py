"""The fast registry reader only reads schemas it was checked against."""

from __future__ import annotations

from pathlib import Path

import mlflow.store.db_migrations
from alembic.script import ScriptDirectory

from registry.readmodel import KNOWN_SCHEMA_REVISIONS, open_reader


def test_known_revisions_include_the_installed_mlflow_head() -> None:
    # An MLflow upgrade that migrates the registry schema fails here: check registry/readmodel.py's queries
    # against the new tables, then add the head.
    migrations = Path(mlflow.store.db_migrations.__file__).parent
    script = ScriptDirectory(str(migrations))
    heads = set(script.get_heads())
    assert heads <= KNOWN_SCHEMA_REVISIONS, heads


def test_non_sql_uris_and_workspaces_use_mlflow(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_ENABLE_WORKSPACES", raising=False)
    monkeypatch.delenv("MLFLOW_WORKSPACE", raising=False)
    assert open_reader("http://mlflow.example:5000") is None
    assert open_reader("databricks") is None
    assert open_reader(tmp_path.as_uri()) is None
    missing = tmp_path / "missing.db"
    assert open_reader(f"sqlite:///{missing}") is None
    assert not missing.exists()  # never creates a database
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert open_reader(f"sqlite:///{empty}") is None  # no alembic_version: not an MLflow store it knows
