"""SQLAlchemy 2 models: access requests, approval votes, grants and audit events.

Alembic migrations under migrations/ are the only source of the schema; these classes must
match them (`alembic check` proves it in CI).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.types import TypeDecorator

# Named constraints keep migrations reproducible and let SQLite batch mode find them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

GENESIS_HASH = "0" * 64


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, also on SQLite (which stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy's own protocol
        datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON,
    }


class AccessRequest(Base):
    """One request for one catalog entry, from submission to revocation."""

    __tablename__ = "access_requests"
    __table_args__ = (
        Index("ix_access_requests_state_created_at", "state", "created_at"),
        Index("ix_access_requests_principal_entry", "principal_arn", "entry_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    requester: Mapped[str] = mapped_column(String(32), index=True)
    principal_arn: Mapped[str] = mapped_column(String(2048))
    entry_id: Mapped[str] = mapped_column(String(200), index=True)
    entry_hash: Mapped[str] = mapped_column(String(64))
    tier: Mapped[str] = mapped_column(String(16))
    instance_arn: Mapped[str | None] = mapped_column(String(2048))
    instance_alias: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    duration_seconds: Mapped[int] = mapped_column(Integer)
    # IAM users in the target group when the request was made (group targets only).
    group_members: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    required_approvals: Mapped[int] = mapped_column(Integer)
    # Slack fills these once the approval message is posted.
    approval_channel: Mapped[str | None] = mapped_column(String(32))
    approval_ts: Mapped[str | None] = mapped_column(String(32))
    # The alert posted about this request (irrevocable, stuck), so a later alert about the
    # same request follows it up in its thread instead of starting a new one.
    alert_channel: Mapped[str | None] = mapped_column(String(32))
    alert_ts: Mapped[str | None] = mapped_column(String(32))
    # Extension rounds: round 0 is the original approval, each extension adds one.
    approval_round: Mapped[int] = mapped_column(Integer, default=0)
    extension_seconds: Mapped[int | None] = mapped_column(Integer)
    extension_requested_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    approved_at: Mapped[datetime | None]
    denied_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    timed_out_at: Mapped[datetime | None]
    granting_at: Mapped[datetime | None]
    granted_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    revoke_requested_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    reminded_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    version: Mapped[int] = mapped_column(Integer)

    votes: Mapped[list[Vote]] = relationship(back_populates="request", order_by="Vote.id")
    grants: Mapped[list[Grant]] = relationship(
        back_populates="request", order_by="Grant.created_at"
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy's own protocol


class Vote(Base):
    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("request_id", "approval_round", "approver",
                         name="uq_votes_request_round_approver"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id", ondelete="CASCADE"))
    approval_round: Mapped[int] = mapped_column(Integer)
    approver: Mapped[str] = mapped_column(String(32))
    decision: Mapped[str] = mapped_column(String(8))  # approve | deny
    comment: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]

    request: Mapped[AccessRequest] = relationship(back_populates="votes")


class Grant(Base):
    """What was put on a principal in IAM for a request, and its removal."""

    __tablename__ = "grants"
    __table_args__ = (
        Index("ix_grants_state_expires_at", "state", "expires_at"),
        Index("ix_grants_state_next_attempt_at", "state", "next_attempt_at"),
    )

    # Short and IAM-name safe: it is the suffix of the policy name.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id", ondelete="CASCADE"),
                                            index=True)
    policy_names: Mapped[list[str]] = mapped_column(JSON)
    kind: Mapped[str] = mapped_column(String(16))  # inline | managed | permission_set
    principal_arn: Mapped[str] = mapped_column(String(2048))
    account: Mapped[str] = mapped_column(String(12))
    document_hash: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    starts_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    attached_at: Mapped[datetime | None]
    revoke_reason: Mapped[str | None] = mapped_column(String(16))
    revoked_by: Mapped[str | None] = mapped_column(String(32))
    revoked_at: Mapped[datetime | None]
    revoke_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    expiry_reminded_at: Mapped[datetime | None]

    request: Mapped[AccessRequest] = relationship(back_populates="grants")

    @property
    def revocation_lag_seconds(self) -> float | None:
        """How long after expiry the policy actually came off (None until revoked). Early
        revocations (I'm done) give 0."""
        if self.revoked_at is None:
            return None
        return max(0.0, (self.revoked_at - self.expires_at).total_seconds())


class AuditEvent(Base):
    """One link of the hash chain. `seq` is assigned under the chain-head lock, so it has
    no gaps; `hash` covers the canonical event and `prev_hash`."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[int | None] = mapped_column(Integer, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """A single row (id 1): the last seq and hash. Appenders lock it, which serialises
    appends, and verify compares it with the last event so a cut-off tail shows."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class PolicyEvidence(Base):
    """A policy document exactly as it was attached for a grant (and again for each
    extension), so an auditor can read what someone could do. `document_hash` is sha256 of
    its canonical JSON (bot.evidence.document_hash) and is also recorded in the audit event
    `audit_seq` (granted / extended), which ties the document to the hash chain. No foreign
    key: evidence outlives the rows it describes."""

    __tablename__ = "policy_evidence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grant_id: Mapped[str] = mapped_column(String(32), index=True)
    request_id: Mapped[int] = mapped_column(Integer, index=True)
    audit_seq: Mapped[int] = mapped_column(BigInteger)
    policy_name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # inline | managed | permission_set
    policy_arn: Mapped[str | None] = mapped_column(String(2048))
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    document_hash: Mapped[str] = mapped_column(String(64))
    attached_at: Mapped[datetime]


class SentNotification(Base):
    """A notification the bot handed to Slack for a request (DM, approval message update,
    alert): part of a request's story in `audit show`."""

    __tablename__ = "sent_notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int | None] = mapped_column(Integer, index=True)
    event: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime]
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class SchedulerHeartbeat(Base):
    """One row per running scheduler process, rewritten every few seconds: whether it leads
    or stands by, and what its last sweep did. `connect-access status` reads them; a row
    whose `beat_at` is old belongs to a process that died."""

    __tablename__ = "scheduler_heartbeats"

    # host:pid, unique while the process lives
    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))  # leader | standby
    started_at: Mapped[datetime]
    beat_at: Mapped[datetime] = mapped_column(index=True)
    beat_interval_seconds: Mapped[float] = mapped_column(Float)
    sweep_interval_seconds: Mapped[float] = mapped_column(Float)
    last_sweep_at: Mapped[datetime | None]
    last_sweep: Mapped[dict[str, Any] | None] = mapped_column(JSON)


def load_request(session: Session, request_id: int) -> AccessRequest | None:
    """The request with its votes and grants loaded, as every reader of one request needs
    them (the lifecycle, the Slack views)."""
    return session.execute(
        select(AccessRequest).where(AccessRequest.id == request_id)
        .options(selectinload(AccessRequest.votes), selectinload(AccessRequest.grants))
    ).scalar_one_or_none()
