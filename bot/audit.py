"""The tamper-evident audit trail: hash-chained events appended in the same transaction as
the change they record, verified and exported by streaming in `seq` order.

Each event's hash is sha256 over its canonical JSON (seq, at, actor, action, request_id,
details) followed by the previous event's hash, so editing, deleting or reordering any
event breaks the chain at that point.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Row, Select, select, update
from sqlalchemy.orm import Session

from bot.models import GENESIS_HASH, AccessRequest, AuditChainHead, AuditEvent

_CHAIN_HEAD_ID = 1
_STREAM_BATCH = 5000


class AuditError(Exception):
    """The audit trail cannot be written or read as asked."""


def canonical_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """Details as they will read back from a JSON column, so the hash made at append time
    is the hash verify recomputes."""
    result: dict[str, Any] = json.loads(json.dumps(dict(details), default=str))
    return result


def format_at(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def event_hash(seq: int, at: datetime, actor: str, action: str, request_id: int | None,
               details: Mapping[str, Any], prev_hash: str) -> str:
    canonical = json.dumps(
        {"seq": seq, "at": format_at(at), "actor": actor, "action": action,
         "request_id": request_id, "details": details},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode() + prev_hash.encode()).hexdigest()


@dataclass(frozen=True)
class NewEvent:
    """An event to append (see append_events): everything but its place in the chain."""

    at: datetime
    actor: str
    action: str
    request_id: int | None
    details: Mapping[str, Any]


def append_event(session: Session, *, at: datetime, actor: str, action: str,
                 request_id: int | None, details: Mapping[str, Any]) -> AuditEvent:
    """Append one event inside the caller's transaction. Locking the chain-head row
    serialises appenders (PostgreSQL row lock; SQLite writers are serial anyway)."""
    return append_events(session, [NewEvent(at, actor, action, request_id, details)])[0]


def append_events(session: Session, events: Sequence[NewEvent]) -> list[AuditEvent]:
    """Append events in order inside the caller's transaction, taking the chain-head lock
    once for all of them: batch work (the expiry sweep) would otherwise queue on that row
    once per event. The chain is the same as appending them one by one."""
    if not events:
        return []
    head = session.execute(
        select(AuditChainHead).where(AuditChainHead.id == _CHAIN_HEAD_ID).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        raise AuditError("the audit chain head row is missing: run `connect-access db upgrade`")
    seq, prev_hash = head.seq, head.hash
    appended = []
    for new in events:
        stored = canonical_details(new.details)
        seq += 1
        digest = event_hash(seq, new.at, new.actor, new.action, new.request_id, stored,
                            prev_hash)
        appended.append(AuditEvent(seq=seq, at=new.at, actor=new.actor, action=new.action,
                                   request_id=new.request_id, details=stored,
                                   prev_hash=prev_hash, hash=digest))
        prev_hash = digest
    session.add_all(appended)
    head.seq, head.hash = seq, prev_hash
    session.flush()
    return appended


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    broken_seq: int | None = None
    problem: str = ""


def verify_chain(session: Session) -> VerifyResult:
    """Walk every event in seq order (streamed) and report the first broken link."""
    columns = (AuditEvent.seq, AuditEvent.at, AuditEvent.actor, AuditEvent.action,
               AuditEvent.request_id, AuditEvent.details, AuditEvent.prev_hash, AuditEvent.hash)
    rows = session.execute(
        select(*columns).order_by(AuditEvent.seq),
        execution_options={"yield_per": _STREAM_BATCH},
    )
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
    for seq, at, actor, action, request_id, details, stored_prev, stored_hash in rows:
        if seq != expected_seq:
            rows.close()
            return VerifyResult(False, checked, expected_seq,
                                f"event {expected_seq} is missing (next present is {seq})")
        if stored_prev != prev_hash:
            rows.close()
            return VerifyResult(False, checked, seq,
                                f"event {seq} does not link to event {seq - 1} (prev_hash differs:"
                                " an event was removed, reordered or rewritten)")
        if event_hash(seq, at, actor, action, request_id, details, prev_hash) != stored_hash:
            rows.close()
            return VerifyResult(False, checked, seq,
                                f"event {seq} was altered after it was written (hash mismatch)")
        prev_hash = stored_hash
        expected_seq += 1
        checked += 1
    head = session.get(AuditChainHead, _CHAIN_HEAD_ID)
    if head is None:
        return VerifyResult(False, checked, None, "the audit chain head row is missing")
    if head.seq != checked or head.hash != prev_hash:
        return VerifyResult(False, checked, checked + 1,
                            f"the chain head records {head.seq} events but {checked} link up: "
                            "events at the end were removed")
    return VerifyResult(True, checked)


ExportFormat = Literal["csv", "jsonl"]
EXPORT_COLUMNS = ("seq", "at", "actor", "action", "request_id", "requester", "entry_id",
                  "details", "prev_hash", "hash")


def export_query(*, since: datetime | None = None, until: datetime | None = None,
                 requester: str | None = None, entry_id: str | None = None,
                 request_id: int | None = None) -> Select[Any]:
    query = (
        select(AuditEvent.seq, AuditEvent.at, AuditEvent.actor, AuditEvent.action,
               AuditEvent.request_id, AccessRequest.requester, AccessRequest.entry_id,
               AuditEvent.details, AuditEvent.prev_hash, AuditEvent.hash)
        .outerjoin(AccessRequest, AccessRequest.id == AuditEvent.request_id)
        .order_by(AuditEvent.seq)
    )
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    if requester is not None:
        query = query.where(AccessRequest.requester == requester)
    if entry_id is not None:
        query = query.where(AccessRequest.entry_id == entry_id)
    if request_id is not None:
        query = query.where(AuditEvent.request_id == request_id)
    return query


def _as_record(row: Row[Any]) -> dict[str, Any]:
    record = dict(zip(EXPORT_COLUMNS, row, strict=True))
    record["at"] = format_at(record["at"])
    return record


def export_lines(session: Session, fmt: ExportFormat, **filters: Any) -> Iterator[str]:
    """Yield the export line by line (header first for csv), streaming from the database."""
    rows = session.execute(export_query(**filters),
                           execution_options={"yield_per": _STREAM_BATCH})
    if fmt == "jsonl":
        for row in rows:
            yield json.dumps(_as_record(row), sort_keys=True, ensure_ascii=False) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for row in rows:
        record = _as_record(row)
        record["details"] = json.dumps(record["details"], sort_keys=True, ensure_ascii=False)
        writer.writerow([("" if record[c] is None else record[c]) for c in EXPORT_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


def reset_chain_head(session: Session) -> None:
    """Point the chain head back at genesis (for tests and bulk loads that rebuild the log)."""
    session.execute(update(AuditChainHead).where(AuditChainHead.id == _CHAIN_HEAD_ID)
                    .values(seq=0, hash=GENESIS_HASH))
