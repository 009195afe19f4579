"""workers table (online workers, kept by the workers); reused stages stored as "reused"

Revision ID: 0004_dash
Revises: 0002_faults
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_dash"
down_revision = "0002_faults"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("device", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
        sa.UniqueConstraint("name", name=op.f("uq_workers_name")),
    )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workers_last_heartbeat"), ["last_heartbeat"], unique=False)
    op.execute("UPDATE stages SET status = 'reused' WHERE status = 'skipped'")


def downgrade() -> None:
    op.execute("UPDATE stages SET status = 'skipped' WHERE status = 'reused'")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workers_last_heartbeat"))
    op.drop_table("workers")
