"""Release provenance and self-test vectors: four nullable columns on ``releases``.

``mlflow_run_id`` and ``data_fingerprint`` replace the query-string hack in ``source_uri``;
``selftest_target`` and ``selftest_sha256`` name the release's self-test vectors TUF target.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 03:25:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable provenance and self-test columns (existing rows keep NULL)."""
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mlflow_run_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("data_fingerprint", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("selftest_target", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("selftest_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Drop the columns again."""
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("selftest_sha256")
        batch_op.drop_column("selftest_target")
        batch_op.drop_column("data_fingerprint")
        batch_op.drop_column("mlflow_run_id")
