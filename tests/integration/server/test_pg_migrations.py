"""The Alembic migrations produce exactly the schema of the SQLAlchemy models on PostgreSQL too."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ota.server.db import make_engine, run_migrations
from ota.server.models import Base


def test_migrations_match_models_on_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    run_migrations(engine)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()
