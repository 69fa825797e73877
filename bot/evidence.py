"""Evidence per request: the policy documents exactly as attached (hash-matched to the
audit event that records them), the notifications sent, and the whole story of one
request for `connect-access audit show` and the auditors' Slack view.

Core module: plain SQLAlchemy over bot.models, no Slack, no boto3.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.db import SessionFactory
from bot.models import (
    AccessRequest,
    AuditEvent,
    Grant,
    PolicyEvidence,
    SentNotification,
    Vote,
)
from bot.ports import Clock, Notification, Notifier
from bot.states import AuditAction

log = logging.getLogger(__name__)


def canonical_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def document_hash(document: Mapping[str, Any]) -> str:
    """sha256 of a policy document's canonical JSON: key order and whitespace do not count.
    The one definition: the IAM granter checks read-backs with it, evidence is stored
    under it, and the audit event of a grant records it."""
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def combined_hash(hashes: Sequence[str]) -> str | None:
    """A grant's `document_hash`: its one document's hash, or sha256 over the hashes of
    its documents in order when it has several; None when nothing was attached. The one
    definition: the lifecycle stores it and reconcile rebuilds it to compare."""
    if not hashes:
        return None
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


@dataclass(frozen=True)
class AttachedDocument:
    """One policy as attached, for record_policy_evidence."""

    name: str
    kind: str
    arn: str | None
    document: Mapping[str, Any]

    @property
    def hash(self) -> str:
        return document_hash(self.document)


def evidence_summary(documents: Sequence[AttachedDocument]) -> list[dict[str, str]]:
    """What the audit event records about the documents (and verify checks against)."""
    return [{"name": d.name, "document_hash": d.hash} for d in documents]


def record_policy_evidence(session: Session, *, grant_id: str, request_id: int,
                           audit_seq: int, attached_at: datetime,
                           documents: Sequence[AttachedDocument]) -> None:
    """Store the documents inside the transaction that appends event `audit_seq`."""
    session.add_all(PolicyEvidence(
        grant_id=grant_id, request_id=request_id, audit_seq=audit_seq,
        policy_name=d.name, kind=d.kind, policy_arn=d.arn,
        document=json.loads(canonical_json(d.document)), document_hash=d.hash,
        attached_at=attached_at) for d in documents)


class NotificationRecorder:
    """A Notifier that hands each notification to the real one, then records that it was
    sent (sent_notifications), so a request's story shows who was told what and when.
    Recording never raises: a database hiccup must not undo or repeat a notification."""

    def __init__(self, inner: Notifier, sessions: SessionFactory, clock: Clock) -> None:
        self.inner = inner
        self.sessions = sessions
        self.clock = clock
        self._lock = threading.Lock()

    def notify(self, notification: Notification) -> None:
        self.inner.notify(notification)
        detail = {k: v for k, v in notification.detail.items()
                  if k in _RECORDED_DETAIL and v is not None}
        try:
            with self.sessions.begin() as session:
                session.add(SentNotification(
                    request_id=notification.request_id, event=notification.event,
                    at=self.clock.now(), detail=json.loads(json.dumps(detail, default=str))))
        except Exception:
            log.exception("could not record notification %s for request %s",
                          notification.event, notification.request_id)


# The parts of a notification that say where it went and why (not the whole payload).
_RECORDED_DETAIL = frozenset({"requester", "channel", "approval_channel", "approvers",
                              "approver", "decision", "grant_id", "expires_at", "error",
                              "reason", "message"})


# -- the story of one request -------------------------------------------------------------

@dataclass(frozen=True)
class PolicyRecord:
    grant_id: str
    name: str
    kind: str
    arn: str | None
    attached_at: datetime
    audit_seq: int
    document: dict[str, Any]
    document_hash: str
    hash_matches: bool  # the stored document hashes to its recorded hash and event


@dataclass(frozen=True)
class GrantRecord:
    id: str
    state: str
    kind: str
    principal_arn: str
    policy_names: list[str]
    attached_at: datetime | None
    expires_at: datetime
    revoked_at: datetime | None
    revoke_reason: str | None
    revoked_by: str | None
    revocation_lag_seconds: float | None
    revoke_attempts: int
    last_error: str | None


@dataclass(frozen=True)
class RequestStory:
    id: int
    requester: str
    entry_id: str
    tier: str
    instance: str | None
    principal_arn: str
    reason: str
    duration_seconds: int
    state: str
    created_at: datetime
    votes: list[dict[str, Any]] = field(default_factory=list)
    grants: list[GrantRecord] = field(default_factory=list)
    policies: list[PolicyRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)

    def milestones(self) -> dict[str, str | None]:
        """When it was asked, decided, granted, extended and revoked (from the events)."""
        first: dict[str, str | None] = {k: None for k in (
            "submitted", "approved", "denied", "granted", "revoked", "failed")}
        extended: list[str] = []
        for event in self.events:
            action = event["action"]
            if action == AuditAction.GRANT_FAILED:
                action = "failed"
            if action in first and first[action] is None:
                first[action] = event["at"]
            if action == AuditAction.EXTENDED:
                extended.append(event["at"])
        return {**first, "extended": ", ".join(extended) or None}

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = _jsonable({
            "id": self.id, "requester": self.requester, "entry_id": self.entry_id,
            "tier": self.tier, "instance": self.instance, "principal_arn": self.principal_arn,
            "reason": self.reason, "duration_seconds": self.duration_seconds,
            "state": self.state, "created_at": self.created_at,
            "milestones": self.milestones(), "votes": self.votes,
            "grants": [g.__dict__ for g in self.grants],
            "policies": [p.__dict__ for p in self.policies],
            "events": self.events, "notifications": self.notifications,
        })
        return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class StoryNotFound(LookupError):
    pass


def request_story(session: Session, request_id: int) -> RequestStory:
    request = session.get(AccessRequest, request_id)
    if request is None:
        raise StoryNotFound(f"There is no request #{request_id}.")
    events = [
        {"seq": e.seq, "at": e.at.astimezone(UTC).isoformat(), "actor": e.actor,
         "action": e.action, "details": e.details}
        for e in session.execute(select(AuditEvent).where(AuditEvent.request_id == request_id)
                                 .order_by(AuditEvent.seq)).scalars()]
    by_seq = {e["seq"]: e for e in events}
    votes = [{"approver": v.approver, "decision": v.decision, "comment": v.comment,
              "round": v.approval_round, "at": v.at.astimezone(UTC).isoformat()}
             for v in session.execute(select(Vote).where(Vote.request_id == request_id)
                                      .order_by(Vote.id)).scalars()]
    grants = [
        GrantRecord(id=g.id, state=g.state, kind=g.kind, principal_arn=g.principal_arn,
                    policy_names=list(g.policy_names), attached_at=g.attached_at,
                    expires_at=g.expires_at, revoked_at=g.revoked_at,
                    revoke_reason=g.revoke_reason, revoked_by=g.revoked_by,
                    revocation_lag_seconds=g.revocation_lag_seconds,
                    revoke_attempts=g.revoke_attempts, last_error=g.last_error)
        for g in session.execute(select(Grant).where(Grant.request_id == request_id)
                                 .order_by(Grant.created_at)).scalars()]
    policies = []
    for row in session.execute(select(PolicyEvidence).where(
            PolicyEvidence.request_id == request_id).order_by(PolicyEvidence.id)).scalars():
        event = by_seq.get(row.audit_seq)
        details = event["details"] if event is not None else {}
        listed = details.get("policies") if isinstance(details, dict) else None
        recorded = {(p.get("name"), p.get("document_hash"))
                    for p in (listed if isinstance(listed, list) else []) if isinstance(p, dict)}
        matches = (document_hash(row.document) == row.document_hash
                   and (row.policy_name, row.document_hash) in recorded)
        policies.append(PolicyRecord(
            grant_id=row.grant_id, name=row.policy_name, kind=row.kind, arn=row.policy_arn,
            attached_at=row.attached_at, audit_seq=row.audit_seq, document=row.document,
            document_hash=row.document_hash, hash_matches=matches))
    notifications = [
        {"event": n.event, "at": n.at.astimezone(UTC).isoformat(), "detail": n.detail}
        for n in session.execute(select(SentNotification).where(
            SentNotification.request_id == request_id).order_by(SentNotification.id)).scalars()]
    return RequestStory(
        id=request.id, requester=request.requester, entry_id=request.entry_id,
        tier=request.tier, instance=request.instance_alias or request.instance_arn,
        principal_arn=request.principal_arn, reason=request.reason,
        duration_seconds=request.duration_seconds, state=request.state,
        created_at=request.created_at, votes=votes, grants=grants, policies=policies,
        events=events, notifications=notifications)
