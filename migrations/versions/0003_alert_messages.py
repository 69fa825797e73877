"""Where the alert about a request was posted (access_requests.alert_channel, alert_ts).

Revision ID: 0003_alert_messages
Revises: 0002_audit_evidence
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_alert_messages"
down_revision: str | Sequence[str] | None = "0002_audit_evidence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.add_column(sa.Column("alert_channel", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("alert_ts", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.drop_column("alert_ts")
        batch.drop_column("alert_channel")
