"""Idempotent submissions and dispatch tracking: a job remembers the caller's
Idempotency-Key and a fingerprint of the request it came with (a key is unique per
principal), and whether its id reached the broker (the dispatcher re-sends it otherwise).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the key and fingerprint columns and the per-principal unique index."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("request_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("dispatched", sa.Boolean, nullable=False,
                                   server_default=sa.true()))
    op.create_index("ux_jobs_principal_idempotency_key", "jobs",
                    ["principal", "idempotency_key"], unique=True)


def downgrade() -> None:
    """Drop them again."""
    op.drop_index("ux_jobs_principal_idempotency_key", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("dispatched")
        batch.drop_column("request_sha256")
        batch.drop_column("idempotency_key")
