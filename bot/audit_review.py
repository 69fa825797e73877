"""Audit review for the people the log is for (`auditors:` in the operator config): who
may review, the filters they give, the summary they get (counts by outcome, each request's
timeline), the export of the same selection, what their App Home shows, and the audit
events that record each view and export.

Core module: the Slack layer (bot/slack/audit_listeners.py) turns these into Block Kit and
file uploads; the same functions back any other surface.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.anchors import AnchorError, AnchorReader, CheckpointSigner, CheckpointVerifier
from bot.audit import ExportFormat, append_event, export_lines
from bot.db import SessionFactory
from bot.models import AccessRequest, AuditChainHead, AuditEvent
from bot.ports import ApproverDirectory, Clock
from bot.request_ids import MAX_REQUEST_ID, parse_request_id
from bot.states import FAILED, IRREVOCABLE
from bot.times import TimeInputError, parse_utc

SUMMARY_LIMIT = 15
TIMELINE_LIMIT = 12
VIEWED, EXPORTED, REFUSED = "audit_viewed", "audit_exported", "audit_refused"


class ReviewError(ValueError):
    """Filters that cannot be used; the message says what to type."""


def is_auditor(directory: ApproverDirectory, auditors: Sequence[str], user: str) -> bool:
    """Named directly (U/W) or a member of a named user group (S)."""
    return bool(auditors) and user in directory.members(list(auditors))


@dataclass(frozen=True)
class ReviewFilter:
    requester: str | None = None
    entry_id: str | None = None
    request_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    fmt: ExportFormat = "csv"

    def describe(self) -> str:
        parts = [f"requester {self.requester}" if self.requester else "",
                 f"entry {self.entry_id}" if self.entry_id else "",
                 f"request #{self.request_id}" if self.request_id is not None else "",
                 f"since {self.since.isoformat()}" if self.since else "",
                 f"until {self.until.isoformat()}" if self.until else ""]
        return ", ".join(p for p in parts if p) or "everything"

    def to_details(self) -> dict[str, Any]:
        return {"requester": self.requester, "entry_id": self.entry_id,
                "request_id": self.request_id,
                "since": None if self.since is None else self.since.isoformat(),
                "until": None if self.until is None else self.until.isoformat(),
                "format": self.fmt}


FILTER_HELP = ("Filters: `requester:@someone` (or a user id), `entry:<catalog entry id>`, "
               "`request:12`, `since:2026-11-01`, `until:2026-11-30T12:00`, "
               "`last:7d` and `format:csv|jsonl`.")
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_USER = re.compile(r"[UW][A-Z0-9]{2,}")


def _time(key: str, value: str) -> datetime:
    try:
        return parse_utc(value)
    except TimeInputError as exc:
        raise ReviewError(f"`{key}:{value}` is not a date or time ({exc}); write it like "
                          "2026-11-01 or 2026-11-01T12:00 (UTC).") from None


def parse_filter(text: str, now: datetime) -> ReviewFilter:
    """`requester:<@U123> entry:x/y request:12 since:... until:... last:7d format:jsonl`."""
    from bot.durations import DurationError, parse_duration

    values: dict[str, Any] = {}
    for word in text.split():
        key, sep, value = word.partition(":")
        key = key.lower()
        if not sep or not value:
            raise ReviewError(f"`{word}` is not a filter. {FILTER_HELP}")
        if key == "requester":
            mention = _MENTION.fullmatch(value)
            user = mention.group(1) if mention else value.lstrip("@")
            if not _USER.fullmatch(user):
                raise ReviewError(f"`{word}`: name the requester with @mention or a user id "
                                  "(U...).")
            values["requester"] = user
        elif key == "entry":
            values["entry_id"] = value
        elif key == "request":
            request_id = parse_request_id(value)
            if request_id is None:
                raise ReviewError(f"`{word}`: a request id is a number from 1 to "
                                  f"{MAX_REQUEST_ID}, like `request:12`.")
            values["request_id"] = request_id
        elif key in ("since", "until"):
            values[key] = _time(key, value)
        elif key == "last":
            try:
                values["since"] = now - parse_duration(value)
            except DurationError as exc:
                raise ReviewError(f"`{word}`: {exc}") from None
        elif key == "format":
            if value.lower() not in ("csv", "jsonl"):
                raise ReviewError(f"`{word}`: the export is `format:csv` or `format:jsonl`.")
            values["fmt"] = value.lower()
        else:
            raise ReviewError(f"`{key}` is not a filter. {FILTER_HELP}")
    chosen = ReviewFilter(**values)
    if chosen.since and chosen.until and chosen.since >= chosen.until:
        raise ReviewError("`since` must be before `until`.")
    return chosen


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    actor: str
    action: str


@dataclass(frozen=True)
class ReviewedRequest:
    id: int
    requester: str
    entry_id: str
    tier: str
    state: str
    created_at: datetime
    reason: str
    timeline: tuple[TimelineEntry, ...]


@dataclass(frozen=True)
class ReviewSummary:
    chosen: ReviewFilter
    total: int
    by_outcome: dict[str, int]
    requests: tuple[ReviewedRequest, ...]  # newest first, at most SUMMARY_LIMIT
    events: int  # audit events in the selection (what the export holds)


def _request_conditions(chosen: ReviewFilter) -> list[Any]:
    conditions: list[Any] = []
    if chosen.requester:
        conditions.append(AccessRequest.requester == chosen.requester)
    if chosen.entry_id:
        conditions.append(AccessRequest.entry_id == chosen.entry_id)
    if chosen.request_id is not None:
        conditions.append(AccessRequest.id == chosen.request_id)
    if chosen.since:
        conditions.append(AccessRequest.created_at >= chosen.since)
    if chosen.until:
        conditions.append(AccessRequest.created_at < chosen.until)
    return conditions


def summarize(session: Session, chosen: ReviewFilter, limit: int = SUMMARY_LIMIT
              ) -> ReviewSummary:
    conditions = _request_conditions(chosen)
    by_outcome = {str(state): int(count) for state, count in session.execute(
        select(AccessRequest.state, func.count()).where(*conditions)
        .group_by(AccessRequest.state).order_by(AccessRequest.state))}
    rows = list(session.execute(select(AccessRequest).where(*conditions)
                                .order_by(AccessRequest.id.desc()).limit(limit)).scalars())
    timelines: dict[int, list[TimelineEntry]] = {r.id: [] for r in rows}
    if rows:
        for request_id, at, actor, action in session.execute(
                select(AuditEvent.request_id, AuditEvent.at, AuditEvent.actor, AuditEvent.action)
                .where(AuditEvent.request_id.in_(list(timelines))).order_by(AuditEvent.seq)):
            if request_id is not None:
                timelines[request_id].append(TimelineEntry(at, actor, action))
    requests = tuple(ReviewedRequest(
        id=r.id, requester=r.requester, entry_id=r.entry_id, tier=r.tier, state=r.state,
        created_at=r.created_at, reason=r.reason,
        timeline=tuple(timelines[r.id][-TIMELINE_LIMIT:])) for r in rows)
    return ReviewSummary(chosen=chosen, total=sum(by_outcome.values()), by_outcome=by_outcome,
                         requests=requests, events=_count_events(session, chosen))


def _count_events(session: Session, chosen: ReviewFilter) -> int:
    query = select(func.count()).select_from(AuditEvent)
    if chosen.requester or chosen.entry_id:
        query = query.join(AccessRequest, AccessRequest.id == AuditEvent.request_id)
    if chosen.requester:
        query = query.where(AccessRequest.requester == chosen.requester)
    if chosen.entry_id:
        query = query.where(AccessRequest.entry_id == chosen.entry_id)
    if chosen.request_id is not None:
        query = query.where(AuditEvent.request_id == chosen.request_id)
    if chosen.since:
        query = query.where(AuditEvent.at >= chosen.since)
    if chosen.until:
        query = query.where(AuditEvent.at < chosen.until)
    return int(session.execute(query).scalar_one())


def export_selection(session: Session, chosen: ReviewFilter) -> Iterator[str]:
    """The events of the selection, as `connect-access audit export` writes them."""
    return export_lines(session, chosen.fmt, since=chosen.since, until=chosen.until,
                        requester=chosen.requester, entry_id=chosen.entry_id,
                        request_id=chosen.request_id)


def record_review(sessions: SessionFactory, clock: Clock, auditor: str, action: str,
                  details: dict[str, Any]) -> int:
    """Viewing and exporting are audit events too; returns the event's seq."""
    with sessions.begin() as session:
        event = append_event(session, at=clock.now(), actor=auditor, action=action,
                             request_id=None, details=details)
        return event.seq


# -- the auditor's App Home ---------------------------------------------------------------

@dataclass(frozen=True)
class ChainStatus:
    """A quick check for App Home (full `audit verify` walks every event): the last anchor
    is signed by the configured key and the chain still holds it, unchanged."""

    ok: bool
    anchored: bool
    message: str
    events: int
    last_anchor_seq: int | None = None
    last_anchor_at: datetime | None = None


def chain_status(session: Session, signer: CheckpointSigner | None,
                 reader: AnchorReader | None,
                 retired: Sequence[CheckpointVerifier] = ()) -> ChainStatus:
    head = session.get(AuditChainHead, 1)
    events = 0 if head is None else head.seq
    if signer is None or reader is None:
        return ChainStatus(True, False, "not anchored: only careless edits can be detected; "
                           "set audit.kms_key_id or signing_key_file and anchor_bucket and/or "
                           "anchor_channel", events)
    try:
        latest = reader.latest()
    except AnchorError as exc:
        return ChainStatus(False, True, f"cannot read the anchors: {exc}", events)
    if latest is None:
        return ChainStatus(True, True, "no checkpoint written yet", events)
    c = latest.checkpoint

    def status(ok: bool, message: str) -> ChainStatus:
        return ChainStatus(ok, True, message, events, c.seq, c.at)

    key = next((k for k in (signer, *retired) if k.key_id == c.key_id), None)
    if key is None or not key.verify(c.payload(), latest.signature):
        return status(False, f"the last checkpoint (event {c.seq}) does not verify with the "
                      "configured key or a retired one")
    stored = session.execute(select(AuditEvent.hash).where(AuditEvent.seq == c.seq)
                             ).scalar_one_or_none()
    if stored is None or events < c.seq:
        return status(False, f"the log holds {events} events but the last checkpoint counted "
                      f"{c.seq}: events were removed")
    if stored != c.head_hash:
        return status(False, f"event {c.seq} differs from its signed checkpoint: the log was "
                      "rewritten")
    return status(True, f"consistent with the last anchor ({events - c.seq} event(s) since)")


@dataclass(frozen=True)
class AuditorHome:
    recent: tuple[ReviewedRequest, ...]
    attention: tuple[ReviewedRequest, ...]  # irrevocable or failed
    status: ChainStatus
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def auditor_home(session: Session, status: ChainStatus, now: datetime, limit: int = 8,
                 attention_window: timedelta = timedelta(days=30)) -> AuditorHome:
    recent = summarize(session, ReviewFilter(), limit=limit).requests
    rows = session.execute(
        select(AccessRequest).where(AccessRequest.state.in_((IRREVOCABLE, FAILED)),
                                    AccessRequest.updated_at >= now - attention_window)
        .order_by(AccessRequest.id.desc()).limit(limit)).scalars()
    attention = tuple(ReviewedRequest(
        id=r.id, requester=r.requester, entry_id=r.entry_id, tier=r.tier, state=r.state,
        created_at=r.created_at, reason=r.reason, timeline=()) for r in rows)
    return AuditorHome(recent=recent, attention=attention, status=status, now=now)
