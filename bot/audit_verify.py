"""`audit verify`: the hash chain checked against the anchors and against the other tables.

In order, stopping at the first inconsistency (reported with what was expected and what
was found):

1. every anchor read back from the stores (S3 and/or the audit Slack channel) is a
   checkpoint signed by the configured key or by a retired one (`audit.previous_keys`,
   reported as such); a forged or corrupted one, or one signed by any other key, is a fault,
   not skipped. Two stores holding different heads for one seq is a fault; a checkpoint
   one store holds and the other lacks is reported (a warning: a post that failed at the
   time, or a deleted channel message) and the union is used;
2. the chain, streamed in seq order: no gap, each event links to the previous one and
   hashes to its stored hash, and at each checkpoint's seq the head equals the signed head
   (a chain edited and recomputed with the project's own hashing fails here);
3. the chain-head row names the last event, and no checkpoint counted more events than
   are there (a cut tail with the head moved back, a restored older copy, a wipe);
4. the tables agree with the log: every request has its `submitted` event, every grant its
   `granting` event and, once revoked, its `revoked` event; every request an event names
   exists; every stored policy document hashes to what its audit event recorded.

Without anchors only (2) to (4) run, and the report says plainly that a rewrite by someone
with write access to the database would pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.anchors import (
    CHAIN_HEAD_ID,
    CheckpointSigner,
    CheckpointVerifier,
    SignedCheckpoint,
    StoredAnchor,
)
from bot.audit import event_hash
from bot.evidence import document_hash
from bot.models import (
    GENESIS_HASH,
    AccessRequest,
    AuditChainHead,
    AuditEvent,
    Grant,
    PolicyEvidence,
)
from bot.states import REVOKED, AuditAction

_STREAM_BATCH = 5000
GRANT_REVOKED = REVOKED  # the grant state whose event must exist

NO_ANCHORS_NOTE = (
    "no anchors are configured (audit.kms_key_id or audit.signing_key_file, and "
    "audit.anchor_bucket and/or audit.anchor_channel): this only detects careless edits; "
    "whoever can write to the database can rewrite, cut or empty the log and still pass")


@dataclass(frozen=True)
class Fault:
    kind: str  # e.g. hash_mismatch, checkpoint_mismatch, truncated, forged_checkpoint
    message: str
    expected: str
    found: str
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "message": self.message,
                "expected": self.expected, "found": self.found}


@dataclass(frozen=True)
class StoreGap:
    """A verified checkpoint one anchor store holds and another lacks."""

    seq: int
    present_in: str
    missing_from: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "present_in": self.present_in,
                "missing_from": self.missing_from}

    def line(self) -> str:
        return (f"warning: checkpoint at event {self.seq} is in {self.present_in} but "
                f"missing from {self.missing_from}")


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    events: int  # events that verified (before the fault, if any)
    anchored: bool
    checkpoints: int  # checkpoints that verified
    last_checkpoint_seq: int | None = None
    last_checkpoint_at: datetime | None = None
    anchor_store: str | None = None
    fault: Fault | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    # Checkpoints that verified with a retired key (audit.previous_keys): key id -> count.
    retired_keys: dict[str, int] = field(default_factory=dict)
    store_gaps: tuple[StoreGap, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "events": self.events, "anchored": self.anchored,
            "checkpoints": self.checkpoints, "last_checkpoint_seq": self.last_checkpoint_seq,
            "last_checkpoint_at": None if self.last_checkpoint_at is None
            else self.last_checkpoint_at.astimezone(UTC).isoformat(),
            "anchor_store": self.anchor_store,
            "fault": None if self.fault is None else self.fault.to_dict(),
            "notes": list(self.notes),
            "retired_keys": dict(self.retired_keys),
            "store_gaps": [gap.to_dict() for gap in self.store_gaps],
        }

    def lines(self) -> list[str]:
        """The human report: first line is the verdict."""
        if self.fault is not None:
            f = self.fault
            where = f" at event {f.seq}" if f.seq is not None else ""
            out = [f"audit chain BROKEN{where}: {f.message}",
                   f"  expected: {f.expected}", f"  found:    {f.found}",
                   f"  ({self.events} events before it verified)"]
        else:
            anchored = ""
            if self.anchored and self.last_checkpoint_seq is not None:
                anchored = (f" against {self.checkpoints} checkpoint(s) in {self.anchor_store}"
                            f" (last: event {self.last_checkpoint_seq} at "
                            f"{_time(self.last_checkpoint_at)})")
            elif self.anchored:
                anchored = f" (no checkpoint in {self.anchor_store} yet)"
            out = [f"audit chain intact: {self.events} events verified{anchored}"]
        out += [f"note: {count} checkpoint(s) signed by the retired key {key} "
                "(audit.previous_keys)" for key, count in sorted(self.retired_keys.items())]
        out += [gap.line() for gap in self.store_gaps]
        return out + [f"note: {note}" for note in self.notes]


def _time(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).isoformat(timespec="seconds")


def _short(digest: str) -> str:
    return digest[:16] + "…"


class _Failed(Exception):
    def __init__(self, fault: Fault) -> None:
        self.fault = fault


def check_anchors(anchors: Sequence[StoredAnchor], signer: CheckpointSigner,
                  retired: Sequence[CheckpointVerifier] = (),
                  retired_used: dict[str, int] | None = None) -> dict[int, SignedCheckpoint]:
    """Checkpoints by seq, each proven signed by `signer` or a retired key (counted into
    `retired_used`); raises _Failed otherwise."""
    verifiers: dict[str, CheckpointVerifier] = {key.key_id: key for key in retired}
    verifiers[signer.key_id] = signer
    verified: dict[int, SignedCheckpoint] = {}
    locations: dict[int, str] = {}
    for anchor in anchors:
        if anchor.signed is None:
            raise _Failed(Fault("unreadable_checkpoint",
                                f"the anchor {anchor.location} is not a readable checkpoint",
                                "a signed checkpoint", anchor.error or "unreadable"))
        c = anchor.signed.checkpoint
        key = verifiers.get(c.key_id)
        if key is None:
            known = ", ".join(verifiers)
            raise _Failed(Fault("forged_checkpoint",
                                f"checkpoint {anchor.location} claims a key that is neither the "
                                "signing key nor one of audit.previous_keys: forged (or add the "
                                "retired key to audit.previous_keys)", known, c.key_id, c.seq))
        if not key.verify(c.payload(), anchor.signed.signature):
            raise _Failed(Fault("forged_checkpoint",
                                f"checkpoint {anchor.location} has a signature that does not "
                                f"verify with {key.key_id}: forged or corrupted",
                                "a valid signature", f"{anchor.signed.algorithm} signature "
                                "that fails", c.seq))
        if c.event_count != c.seq:
            raise _Failed(Fault("forged_checkpoint",
                                f"checkpoint {anchor.location} counts {c.event_count} events at "
                                f"seq {c.seq}", str(c.seq), str(c.event_count), c.seq))
        seen = verified.get(c.seq)
        if seen is not None and seen.checkpoint.head_hash != c.head_hash:
            raise _Failed(Fault("checkpoint_conflict",
                                f"two signed checkpoints at event {c.seq} name different heads "
                                f"({locations[c.seq]} and {anchor.location}): the chain was "
                                "rewritten between them", _short(seen.checkpoint.head_hash),
                                _short(c.head_hash), c.seq))
        if key is not signer and retired_used is not None and seen is None:
            retired_used[key.key_id] = retired_used.get(key.key_id, 0) + 1
        verified[c.seq] = anchor.signed
        locations[c.seq] = anchor.location
    return verified


def store_gaps(listings: Sequence[tuple[str, Sequence[StoredAnchor]]]) -> tuple[StoreGap, ...]:
    """With more than one store: each checkpoint (by seq) one holds and another lacks."""
    if len(listings) < 2:
        return ()
    seqs = {name: {a.signed.checkpoint.seq for a in anchors if a.signed is not None}
            for name, anchors in listings}
    gaps: list[StoreGap] = []
    for name, held in seqs.items():
        for other, other_held in seqs.items():
            gaps.extend(StoreGap(seq, name, other) for seq in sorted(held - other_held)
                        if other != name)
    return tuple(sorted(gaps, key=lambda gap: (gap.seq, gap.present_in)))


def verify_audit(session: Session, *, signer: CheckpointSigner | None = None,
                 anchors: Sequence[StoredAnchor] | None = None,
                 anchor_store: str | None = None,
                 retired_keys: Sequence[CheckpointVerifier] = (),
                 gaps: tuple[StoreGap, ...] = ()) -> AuditReport:
    """Check everything listed in the module docstring. `anchors` None: not configured;
    else every store's anchors together (`gaps`: what one store lacks, see store_gaps)."""
    anchored = anchors is not None and signer is not None
    notes: list[str] = [] if anchored else [NO_ANCHORS_NOTE]
    checkpoints: dict[int, SignedCheckpoint] = {}
    retired_used: dict[str, int] = {}
    progress = _Progress()
    try:
        if anchored:
            assert anchors is not None and signer is not None
            checkpoints = check_anchors(anchors, signer, retired_keys, retired_used)
        _walk(session, checkpoints, notes, progress)
    except _Failed as failed:
        return replace(_report(False, progress.events, anchored, checkpoints, anchor_store,
                               failed.fault, notes), retired_keys=retired_used, store_gaps=gaps)
    return replace(_report(True, progress.events, anchored, checkpoints, anchor_store, None,
                           notes), retired_keys=retired_used, store_gaps=gaps)


@dataclass
class _Progress:
    events: int = 0


def _report(ok: bool, events: int, anchored: bool, checkpoints: dict[int, SignedCheckpoint],
            store: str | None, fault: Fault | None, notes: list[str]) -> AuditReport:
    last = checkpoints[max(checkpoints)].checkpoint if checkpoints else None
    return AuditReport(
        ok=ok, events=events, anchored=anchored, checkpoints=len(checkpoints),
        last_checkpoint_seq=None if last is None else last.seq,
        last_checkpoint_at=None if last is None else last.at, anchor_store=store,
        fault=fault, notes=tuple(notes))


def _walk(session: Session, checkpoints: dict[int, SignedCheckpoint], notes: list[str],
          progress: _Progress) -> None:
    evidence = _evidence_by_seq(session)
    columns = (AuditEvent.seq, AuditEvent.at, AuditEvent.actor, AuditEvent.action,
               AuditEvent.request_id, AuditEvent.details, AuditEvent.prev_hash, AuditEvent.hash)
    rows = session.execute(select(*columns).order_by(AuditEvent.seq),
                           execution_options={"yield_per": _STREAM_BATCH})
    submitted: set[int] = set()
    named_requests: set[int] = set()
    granting: set[str] = set()
    revoked: set[str] = set()
    expected_seq, prev_hash = 1, GENESIS_HASH
    try:
        for seq, at, actor, action, request_id, details, stored_prev, stored_hash in rows:
            if seq != expected_seq:
                raise _Failed(Fault("missing_event",
                                    f"event {expected_seq} is missing (next present is {seq})",
                                    f"event {expected_seq}", f"event {seq}", expected_seq))
            if stored_prev != prev_hash:
                raise _Failed(Fault("broken_link",
                                    f"event {seq} does not link to event {seq - 1} (prev_hash "
                                    "differs: an event was removed, reordered or rewritten)",
                                    _short(prev_hash), _short(stored_prev), seq))
            if event_hash(seq, at, actor, action, request_id, details, prev_hash) != stored_hash:
                raise _Failed(Fault("hash_mismatch",
                                    f"event {seq} was altered after it was written (hash "
                                    "mismatch)", "the hash of its contents",
                                    _short(stored_hash), seq))
            anchor = checkpoints.get(seq)
            if anchor is not None and anchor.checkpoint.head_hash != stored_hash:
                raise _Failed(Fault(
                    "checkpoint_mismatch",
                    f"the chain at event {seq} differs from the checkpoint signed at "
                    f"{_time(anchor.checkpoint.at)}: events up to {seq} were rewritten and "
                    "their hashes recomputed", _short(anchor.checkpoint.head_hash),
                    _short(stored_hash), seq))
            if request_id is not None:
                named_requests.add(request_id)
                if action == AuditAction.SUBMITTED:
                    submitted.add(request_id)
            names_grant = action in (AuditAction.GRANTING, AuditAction.REVOKED)
            if names_grant and isinstance(details, dict):
                grant_id = details.get("grant_id")
                if isinstance(grant_id, str):
                    (granting if action == AuditAction.GRANTING else revoked).add(grant_id)
            recorded = evidence.pop(seq, None)
            if recorded is not None:
                _check_evidence(seq, request_id, details, recorded)
            prev_hash = stored_hash
            progress.events = expected_seq
            expected_seq += 1
    finally:
        rows.close()
    count = expected_seq - 1
    head = session.get(AuditChainHead, CHAIN_HEAD_ID)
    if head is None:
        raise _Failed(Fault("head_missing", "the audit chain head row is missing",
                            "one chain-head row", "none"))
    if head.seq != count or head.hash != prev_hash:
        raise _Failed(Fault("head_mismatch",
                            f"the chain head records {head.seq} events but {count} link up: "
                            "events at the end were removed", f"{head.seq} events",
                            f"{count} events", count + 1))
    if checkpoints:
        last = checkpoints[max(checkpoints)].checkpoint
        if last.seq > count:
            what = ("every event was deleted" if count == 0 else
                    "events at the end were removed, or an older copy of the database "
                    "was restored")
            raise _Failed(Fault("truncated",
                                f"the checkpoint signed at {_time(last.at)} counted {last.seq} "
                                f"events, but the log holds {count}: {what}",
                                f"at least {last.seq} events", f"{count} events", count + 1))
        if count > last.seq:
            notes.append(f"{count - last.seq} event(s) after event {last.seq} are not anchored "
                         "yet (the next checkpoint covers them)")
    _cross_check(session, submitted, named_requests, granting, revoked)
    if evidence:
        seq = min(evidence)
        raise _Failed(Fault("evidence_orphaned",
                            f"policy evidence names audit event {seq}, which is not in the log",
                            f"event {seq}", "no such event"))


def _evidence_by_seq(session: Session) -> dict[int, list[tuple[int, str, str, str]]]:
    """(request_id, policy name, stored hash, hash of the stored document) by audit seq."""
    found: dict[int, list[tuple[int, str, str, str]]] = {}
    for row in session.execute(select(PolicyEvidence).order_by(PolicyEvidence.id),
                               execution_options={"yield_per": 500}).scalars():
        found.setdefault(row.audit_seq, []).append(
            (row.request_id, row.policy_name, row.document_hash, document_hash(row.document)))
    session.expunge_all()
    return found


def _check_evidence(seq: int, request_id: int | None, details: Any,
                    recorded: list[tuple[int, str, str, str]]) -> None:
    listed = details.get("policies") if isinstance(details, dict) else None
    in_event = {(p.get("name"), p.get("document_hash"))
                for p in (listed if isinstance(listed, list) else []) if isinstance(p, dict)}
    for owner, name, stored, actual in recorded:
        if actual != stored:
            raise _Failed(Fault("evidence_altered",
                                f"the stored document of policy {name} (request #{owner}) was "
                                "changed after it was recorded", _short(stored),
                                _short(actual), seq))
        if owner != request_id or (name, stored) not in in_event:
            raise _Failed(Fault("evidence_mismatch",
                                f"policy {name} (request #{owner}) is not the one audit event "
                                f"{seq} recorded", f"a policy listed in event {seq}",
                                f"{name} {_short(stored)}", seq))


def _cross_check(session: Session, submitted: set[int], named: set[int], granting: set[str],
                 revoked: set[str]) -> None:
    request_ids: set[int] = set()
    for (request_id,) in session.execute(select(AccessRequest.id).order_by(AccessRequest.id)):
        request_ids.add(request_id)
        if request_id not in submitted:
            raise _Failed(Fault("missing_submitted",
                                f"request #{request_id} has no `submitted` event: its events "
                                "were deleted", f"a submitted event for request #{request_id}",
                                "none"))
    missing_rows = sorted(named - request_ids)
    if missing_rows:
        raise _Failed(Fault("missing_request",
                            f"the log has events of request #{missing_rows[0]}, which is not in "
                            "the requests table: the row was deleted",
                            f"request #{missing_rows[0]}", "no such row"))
    for grant_id, request_id, state in session.execute(
            select(Grant.id, Grant.request_id, Grant.state).order_by(Grant.created_at, Grant.id)):
        if grant_id not in granting:
            raise _Failed(Fault("missing_granting",
                                f"grant {grant_id} (request #{request_id}) has no `granting` "
                                "event", f"a granting event for grant {grant_id}", "none"))
        if state == GRANT_REVOKED and grant_id not in revoked:
            raise _Failed(Fault("missing_revoked",
                                f"grant {grant_id} (request #{request_id}) is revoked but has no "
                                "`revoked` event", f"a revoked event for grant {grant_id}",
                                "none"))
