"""Alembic migrations of the OTA server (run in process by ``ota.server.db.run_migrations``)."""
