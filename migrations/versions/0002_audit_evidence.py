"""Audit evidence: the policy documents as attached, and the notifications sent.

Revision ID: 0002_audit_evidence
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_audit_evidence"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "policy_evidence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("grant_id", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("audit_seq", sa.BigInteger(), nullable=False),
        sa.Column("policy_name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("policy_arn", sa.String(length=2048), nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("document_hash", sa.String(length=64), nullable=False),
        sa.Column("attached_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_evidence")),
    )
    with op.batch_alter_table("policy_evidence", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_policy_evidence_grant_id"), ["grant_id"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_policy_evidence_request_id"), ["request_id"],
                              unique=False)

    op.create_table(
        "sent_notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=True),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sent_notifications")),
    )
    with op.batch_alter_table("sent_notifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sent_notifications_request_id"), ["request_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sent_notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sent_notifications_request_id"))
    op.drop_table("sent_notifications")
    with op.batch_alter_table("policy_evidence", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policy_evidence_request_id"))
        batch_op.drop_index(batch_op.f("ix_policy_evidence_grant_id"))
    op.drop_table("policy_evidence")
