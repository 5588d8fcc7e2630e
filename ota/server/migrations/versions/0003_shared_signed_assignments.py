"""Shared signed assignments and bulk signing jobs; rollout change generations and cached cohort sizes.

``signed_assignments`` holds every device's signed assignment once for all server processes;
``assignment_jobs``/``assignment_job_slices`` are the resumable bulk re-signing jobs a rollout change
enqueues; ``rollouts`` gains ``changed_generation`` and a cohort size cached with the counters it was
counted at (``cohort_count``, ``cohort_stamp``, ``cohort_fleet``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 18:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the three tables and add the rollout columns (existing rollouts: generation 0, no count)."""
    op.create_table(
        "signed_assignments",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("current_key", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("refresh_at", sa.BigInteger(), nullable=False),
        sa.Column("poll_interval", sa.Integer(), nullable=False),
        sa.Column("etag", sa.String(length=40), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "current_key", name=op.f("pk_signed_assignments")),
    )
    op.create_table(
        "assignment_jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("rollout_id", sa.String(length=32), nullable=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("fleet", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assignment_jobs")),
    )
    with op.batch_alter_table("assignment_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_assignment_jobs_done_at"), ["done_at"], unique=False)
    op.create_table(
        "assignment_job_slices",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("slice", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.String(length=64), nullable=False),
        sa.Column("until", sa.String(length=64), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("signed", sa.Integer(), nullable=False),
        sa.Column("matched", sa.Integer(), nullable=False),
        sa.Column("cohort", sa.Integer(), nullable=False),
        sa.Column("consistent", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["assignment_jobs.id"], name=op.f("fk_assignment_job_slices_job_id_assignment_jobs")
        ),
        sa.PrimaryKeyConstraint("job_id", "slice", name=op.f("pk_assignment_job_slices")),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("changed_generation", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("cohort_count", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cohort_stamp", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("cohort_fleet", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Drop what upgrade added."""
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("cohort_fleet")
        batch_op.drop_column("cohort_stamp")
        batch_op.drop_column("cohort_count")
        batch_op.drop_column("changed_generation")
    op.drop_table("assignment_job_slices")
    with op.batch_alter_table("assignment_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_assignment_jobs_done_at"))
    op.drop_table("assignment_jobs")
    op.drop_table("signed_assignments")
