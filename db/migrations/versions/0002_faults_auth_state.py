"""authentication state shared by every dashboard process: sessions and failed attempts

Revision ID: 0002_faults
Revises: 0001
Create Date: 2026-12-01 22:55:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_faults"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_sessions",
        sa.Column("sid", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=32), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sid", name=op.f("pk_auth_sessions")),
    )
    op.create_index(op.f("ix_auth_sessions_expires_at"), "auth_sessions", ["expires_at"], unique=False)
    op.create_table(
        "auth_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_failures")),
    )
    op.create_index("ix_auth_failures_client_at", "auth_failures", ["client", "at"], unique=False)
    op.create_index(op.f("ix_auth_failures_at"), "auth_failures", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_auth_failures_at"), table_name="auth_failures")
    op.drop_index("ix_auth_failures_client_at", table_name="auth_failures")
    op.drop_table("auth_failures")
    op.drop_index(op.f("ix_auth_sessions_expires_at"), table_name="auth_sessions")
    op.drop_table("auth_sessions")
