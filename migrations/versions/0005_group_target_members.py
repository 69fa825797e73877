"""access_requests.group_members: how many IAM users a group target reached when the
request was made, shown to approvers.

Revision ID: 0005_group_target_members
Revises: 0004_identity_center_grants
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_group_target_members"
down_revision: str | Sequence[str] | None = "0004_identity_center_grants"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.add_column(sa.Column("group_members", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.drop_column("group_members")
