"""The stages of each job: one row per stage of the audit's plan, created with the job, so
that callers see every stage before, during and after a run, and so that several workers can
share one audit (each stage claimed, leased and finished like a job).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create job_stages."""
    op.create_table(
        "job_stages",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("stage_id", sa.String(255), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("needs", sa.Text, nullable=False, server_default="[]"),
        sa.Column("waits", sa.Text, nullable=False, server_default="[]"),
        sa.Column("cost", sa.Float, nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("lease_until", sa.DateTime, nullable=True),
        sa.Column("dispatched", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("result", sa.Text, nullable=True),
    )


def downgrade() -> None:
    """Drop job_stages."""
    op.drop_table("job_stages")
