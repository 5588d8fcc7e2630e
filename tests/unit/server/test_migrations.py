"""The Alembic migrations produce exactly the schema of the SQLAlchemy models (no drift), on SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ota.server.db import make_engine, run_migrations
from ota.server.models import Base


def test_migrations_match_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    run_migrations(engine)
    run_migrations(engine)  # idempotent: already at head
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()
