"""Web console: its server-side sessions, and two device indexes its fleet views filter and group by.

``console_sessions`` holds one row per signed-in browser (the sha256 of the cookie value, the operator
token it was opened with, its CSRF token and expiry). ``devices.current_sha256`` (installed release) and
``devices.updated_at`` (last report) get indexes so the devices page stays fast at 100,000 devices.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 18:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the sessions table and the two device indexes."""
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_console_sessions")),
    )
    op.create_index(op.f("ix_console_sessions_token_id"), "console_sessions", ["token_id"], unique=False)
    op.create_index(op.f("ix_console_sessions_expires_at"), "console_sessions", ["expires_at"], unique=False)
    op.create_index(op.f("ix_devices_current_sha256"), "devices", ["current_sha256"], unique=False)
    op.create_index(op.f("ix_devices_updated_at"), "devices", ["updated_at"], unique=False)


def downgrade() -> None:
    """Drop them again."""
    op.drop_index(op.f("ix_devices_updated_at"), table_name="devices")
    op.drop_index(op.f("ix_devices_current_sha256"), table_name="devices")
    op.drop_index(op.f("ix_console_sessions_expires_at"), table_name="console_sessions")
    op.drop_index(op.f("ix_console_sessions_token_id"), table_name="console_sessions")
    op.drop_table("console_sessions")
