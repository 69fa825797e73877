"""Grants can be IAM Identity Center permission sets: `grants.kind` and
`policy_evidence.kind` hold "permission_set", longer than the 8 characters that
"inline"/"managed" needed.

Revision ID: 0004_identity_center_grants
Revises: 0003_alert_messages
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_identity_center_grants"
down_revision: str | Sequence[str] | None = "0003_alert_messages"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


TABLES = ("grants", "policy_evidence")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column("kind", existing_type=sa.String(length=8),
                               type_=sa.String(length=16), existing_nullable=False)


def downgrade() -> None:
    # Refuses (on PostgreSQL) while permission-set grants exist, rather than cut them.
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column("kind", existing_type=sa.String(length=16),
                               type_=sa.String(length=8), existing_nullable=False)
