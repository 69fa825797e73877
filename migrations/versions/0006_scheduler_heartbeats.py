"""Scheduler heartbeats: which scheduler leads, which stand by, and their last sweep.

Revision ID: 0006_scheduler_heartbeats
Revises: 0005_group_target_members
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_scheduler_heartbeats"
down_revision: str | Sequence[str] | None = "0005_group_target_members"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scheduler_heartbeats",
        sa.Column("id", sa.String(length=300), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_interval_seconds", sa.Float(), nullable=False),
        sa.Column("sweep_interval_seconds", sa.Float(), nullable=False),
        sa.Column("last_sweep_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_sweep", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_heartbeats")),
    )
    op.create_index(op.f("ix_scheduler_heartbeats_beat_at"), "scheduler_heartbeats",
                    ["beat_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_scheduler_heartbeats_beat_at"), table_name="scheduler_heartbeats")
    op.drop_table("scheduler_heartbeats")
