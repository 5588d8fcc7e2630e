"""Alembic environment of the OTA server: runs migrations on the connection the caller hands in.

``ota.server.db.run_migrations`` puts an open connection in ``config.attributes["connection"]``; there is
no alembic.ini and no URL here, so the same code migrates SQLite and PostgreSQL.
"""

from __future__ import annotations

from alembic import context

from ota.server.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through ota.server.db.run_migrations (edgefleet server migrate)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
