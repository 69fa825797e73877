"""Revocation: active -> revoking -> revoked, or irrevocable after the retries, then
revoked once IAM lets go. One path for every revoke: a grant is claimed (moved to revoking,
leased), its IAM call runs outside any transaction, and one transaction settles the result;
revoke() does this for one request, revoke_due_batch for every due grant.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import bindparam, inspect, or_, select, update
from sqlalchemy.orm import InstanceState, Session

from bot.audit import NewEvent, append_events
from bot.decisions import (
    SYSTEM,
    RevokeReason,
    may_revoke,
)
from bot.lifecycle.errors import (
    InvalidTransition,
    NotFound,
)
from bot.lifecycle.transitions import (
    RECONCILE_ACTOR,
    Transitions,
    facts_of,
    require,
)
from bot.models import AccessRequest, Grant
from bot.ports import (
    GrantError,
    NotificationEvent,
    PolicyKind,
)
from bot.states import (
    ACTIVE,
    FAILED,
    IRREVOCABLE,
    LIVE_STATES,
    REVOKED,
    REVOKING,
    AuditAction,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RevocationOutcome:
    grant_id: str
    request_id: int
    state: str  # revoked | revoking (will retry) | irrevocable
    error: str | None = None


# A notification to send once the transaction that decided it has committed.
_PendingNotice = tuple[NotificationEvent, dict[str, Any]]


@dataclass(frozen=True)
class _ClaimedRevoke:
    """A grant claimed for revocation (by revoke or revoke_due_batch): what the IAM call
    needs, outside any session."""

    grant_id: str
    request_id: int
    principal_arn: str
    kind: PolicyKind
    policy_names: tuple[str, ...]


def _claim_of(grant: Grant) -> _ClaimedRevoke:
    return _ClaimedRevoke(grant.id, grant.request_id, grant.principal_arn,
                          cast(PolicyKind, grant.kind), tuple(grant.policy_names))


UNEXPECTED_ERROR = "UnexpectedError"


def revoke_error(exc: Exception, grant_id: str) -> GrantError:
    """What a failed revoke attempt counts as. The granter classifies IAM's answers itself
    (GrantError: transient or permanent, with the AWS code); anything else is a fault
    nobody foresaw, and counts as a transient attempt like any other: retried with backoff
    and, once the attempts are used up, irrevocable and alerted, rather than retried after
    every claim lease for ever with nobody told."""
    if isinstance(exc, GrantError):
        return exc
    log.error("revoking grant %s failed unexpectedly (%s: %s); counted as an attempt",
              grant_id, type(exc).__name__, exc)
    return GrantError(f"unexpected {type(exc).__name__}: {exc}", transient=True,
                      code=UNEXPECTED_ERROR)


class Revocation:
    """revoke, revoke_due_batch (and what it selects), end_active_by_reconcile."""

    def __init__(self, core: Transitions) -> None:
        self.core = core

    def revoke(self, request_id: int, actor: str, reason: RevokeReason) -> RevocationOutcome:
        """Take active access away: by the requester ("I'm done"), an approver, or expiry."""
        with self.core.transaction() as session:
            request = self.core.locked(session, request_id)
            is_approver = reason == "approver" and actor in self.core.approvers.members(
                self.core.route(request).approvers)
            require(may_revoke(facts_of(request), actor, reason, is_approver=is_approver))
            grant = self._start_revoking(session, request, actor, reason)
            claim = _claim_of(grant)
        # The same attempt and settle as the batch's, for this one grant.
        outcomes = self._revoke_claimed([claim])
        if outcomes:
            return outcomes[0]
        # Settled by another worker meanwhile (possible only once our lease ran out).
        with self.core.sessions() as session:
            grant = session.get_one(Grant, claim.grant_id)
            return RevocationOutcome(grant.id, request_id, grant.state, grant.last_error)

    def _start_revoking(self, session: Session, request: AccessRequest, actor: str,
                        reason: RevokeReason) -> Grant:
        grant = self.core.active_grant(request, session)
        if grant is None:
            raise InvalidTransition(f"Request #{request.id} has no grant to revoke.")
        append_events(session, [self._begin_revoking(request, grant, actor, reason)])
        return grant

    def _begin_revoking(self, request: AccessRequest, grant: Grant, actor: str,
                        reason: RevokeReason) -> NewEvent:
        """Move an active grant and its request to revoking; returns the audit event."""
        now = self.core.clock.now()
        grant.state, grant.revoke_reason, grant.revoked_by = REVOKING, reason, actor
        # Claimed for the lease: a sweeper elsewhere leaves it alone until then.
        grant.next_attempt_at = now + self.core.claim_lease
        request.extension_seconds = request.extension_requested_at = None
        return self.core.moved(request, REVOKING, actor=actor, action=AuditAction.REVOKING,
                               details={"grant_id": grant.id, "reason": reason})

    def due_for_revocation(self, now: datetime | None = None) -> list[str]:
        """Grant ids the sweeper should act on: expired active ones, and revocations whose
        next attempt is due (including irrevocable ones being re-tried)."""
        now = now or self.core.clock.now()
        with self.core.sessions() as session:
            return list(session.execute(
                select(Grant.id).where(or_(
                    (Grant.state == ACTIVE) & (Grant.expires_at <= now),
                    Grant.state.in_((REVOKING, IRREVOCABLE)) & (Grant.next_attempt_at <= now),
                )).order_by(Grant.expires_at)
            ).scalars())

    def overdue(self, now: datetime | None = None) -> list[Grant]:
        """Grants still on a principal after their expiry (for alerts and `grants list`)."""
        now = now or self.core.clock.now()
        with self.core.sessions() as session:
            return list(session.execute(
                select(Grant).where(Grant.state.in_((ACTIVE, REVOKING, IRREVOCABLE)),
                                    Grant.expires_at <= now).order_by(Grant.expires_at)
            ).scalars())

    def revoke_due_batch(self, now: datetime | None = None, *, limit: int = 200,
                         states: Collection[str] = LIVE_STATES,
                         executor: Executor | None = None) -> list[RevocationOutcome]:
        """Revoke up to `limit` due grants (the selection of due_for_revocation, narrowed to
        `states`) in three steps, each grant with the same result as revoke() gives:

        1. one transaction claims them (request rows FOR UPDATE SKIP LOCKED on PostgreSQL),
           moves active ones to revoking and leases every one for `claim_lease`;
        2. the IAM calls run outside any transaction, on `executor` when given;
        3. one transaction records every result (revoked, retry with backoff,
           irrevocable), then the notifications go out.

        The audit events of each transaction are appended under one chain-head lock, which
        is what lets a batch go faster than grant-by-grant revocation. A crash between 1
        and 3 leaves claimed grants revoking with a lease; a later call picks them up once
        it runs out. Returns an outcome per grant whose result was recorded (a failure the
        granter did not classify counts as an attempt, see revoke_error); an empty list
        means nothing was due.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return self._revoke_claimed(self._claim_due(now or self.core.clock.now(), limit, states),
                                    executor)

    def _revoke_claimed(self, claimed: list[_ClaimedRevoke], executor: Executor | None = None
                        ) -> list[RevocationOutcome]:
        """The IAM revoke of each claimed grant (on `executor` when given), outside any
        transaction, then one transaction that records every result."""
        if not claimed:
            return []

        def attempt(claim: _ClaimedRevoke) -> GrantError | None:
            try:
                self.core.granter.revoke(claim.principal_arn, claim.kind, claim.policy_names)
            except Exception as exc:
                return revoke_error(exc, claim.grant_id)
            return None

        if executor is None:
            results = [attempt(claim) for claim in claimed]
        else:
            results = list(executor.map(attempt, claimed))
        settled = {claim.grant_id: result for claim, result in zip(claimed, results, strict=True)}
        return self._settle_claimed(claimed, settled)

    def _claim_due(self, now: datetime, limit: int, states: Collection[str]
                   ) -> list[_ClaimedRevoke]:
        due = or_(
            (Grant.state == ACTIVE) & (Grant.expires_at <= now),
            Grant.state.in_((REVOKING, IRREVOCABLE)) & (Grant.next_attempt_at <= now),
        )
        claimed: list[_ClaimedRevoke] = []
        with self.core.transaction() as session:
            requests = {request.id: request for request in session.execute(
                select(AccessRequest)
                .join(Grant, Grant.request_id == AccessRequest.id)
                .where(due, Grant.state.in_(tuple(states)))
                .order_by(Grant.expires_at, Grant.id).limit(limit)
                .with_for_update(skip_locked=True, of=AccessRequest)
                .execution_options(populate_existing=True)
            ).scalars()}
            if not requests:
                return []
            # Re-read the grants now that their requests are locked: the join above saw
            # them as of its snapshot, and another worker may have finished one since.
            grants = session.execute(
                select(Grant).where(Grant.request_id.in_(list(requests)),
                                   Grant.state.in_(tuple(states)))
                .order_by(Grant.expires_at, Grant.id)
                .execution_options(populate_existing=True)
            ).scalars()
            events: list[NewEvent] = []
            for grant in grants:
                request = requests[grant.request_id]
                if (grant.state == ACTIVE and grant.expires_at <= now
                        and request.state == ACTIVE):
                    events.append(self._begin_revoking(request, grant, SYSTEM, "expiry"))
                elif (grant.state in (REVOKING, IRREVOCABLE) and grant.next_attempt_at is not None
                      and grant.next_attempt_at <= now):
                    grant.next_attempt_at = now + self.core.claim_lease
                else:
                    continue
                claimed.append(_claim_of(grant))
            _write_changed_rows(session)
            append_events(session, events)
        return claimed

    def _settle_claimed(self, claimed: list[_ClaimedRevoke],
                        results: Mapping[str, GrantError | None]) -> list[RevocationOutcome]:
        to_settle = [claim for claim in claimed if claim.grant_id in results]
        if not to_settle:
            return []
        outcomes: list[RevocationOutcome] = []
        notices: list[tuple[AccessRequest, _PendingNotice]] = []
        with self.core.transaction() as session:
            # Locked in id order, so two batches settling at once cannot deadlock.
            requests = {request.id: request for request in session.execute(
                select(AccessRequest)
                .where(AccessRequest.id.in_({claim.request_id for claim in to_settle}))
                .order_by(AccessRequest.id).with_for_update()
                .execution_options(populate_existing=True)
            ).scalars()}
            grants = {grant.id: grant for grant in session.execute(
                select(Grant).where(Grant.id.in_([claim.grant_id for claim in to_settle]))
                .execution_options(populate_existing=True)
            ).scalars()}
            events: list[NewEvent] = []
            for claim in to_settle:
                request, grant = requests[claim.request_id], grants[claim.grant_id]
                if grant.state not in (REVOKING, IRREVOCABLE):
                    # Our lease ran out and another worker finished it meanwhile.
                    log.warning("grant %s was %s by the time its revoke was recorded; "
                                "leaving it as it is", grant.id, grant.state)
                    continue
                error = results[claim.grant_id]
                event, notice = self._settle_revoke(request, grant, error)
                events.append(event)
                if notice is not None:
                    notices.append((request, notice))
                outcomes.append(RevocationOutcome(grant.id, request.id, grant.state,
                                                  None if error is None else grant.last_error))
            _write_changed_rows(session)
            append_events(session, events)
        for request, (event_name, detail) in notices:
            self.core.notify(event_name, request, **detail)
        return outcomes

    def _settle_revoke(self, request: AccessRequest, grant: Grant, error: GrantError | None
                       ) -> tuple[NewEvent, _PendingNotice | None]:
        """Record the result of one IAM revoke on a locked request and its grant: revoked,
        back for a retry with backoff, or irrevocable. Returns the audit event to append
        and the notification to send after commit."""
        now = self.core.clock.now()
        if error is None:
            after_irrevocable = grant.state == IRREVOCABLE
            grant.state, grant.revoked_at, grant.next_attempt_at = REVOKED, now, None
            event = self.core.moved(request, REVOKED, actor=SYSTEM,
                                    action=AuditAction.REVOKED, details={
                "grant_id": grant.id, "reason": grant.revoke_reason,
                "attempts": grant.revoke_attempts + 1,
                "lag_seconds": grant.revocation_lag_seconds})
            return event, (NotificationEvent.REVOKED, {
                "grant_id": grant.id, "reason": grant.revoke_reason,
                "revoked_by": grant.revoked_by, "policy_names": list(grant.policy_names),
                "after_irrevocable": after_irrevocable})
        if error.throttled:
            # IAM refused our pace, not this revoke: no attempt is counted (throttling alone
            # never makes a grant irrevocable) and it is tried again soon, in expiry order
            # with the other due grants.
            grant.last_error = f"{error.code}: {error}" if error.code else str(error)
            grant.next_attempt_at = now + self.core.throttle_retry
            return self.core.event(request, SYSTEM, AuditAction.REVOKE_FAILED, {
                "grant_id": grant.id, "error": grant.last_error, "throttled": True,
                "attempts": grant.revoke_attempts,
                "next_attempt_at": grant.next_attempt_at.isoformat()}), None
        grant.revoke_attempts += 1
        grant.last_error = f"{error.code}: {error}" if error.code else str(error)
        exhausted = not error.transient or grant.revoke_attempts >= self.core.max_revoke_attempts
        if grant.state == REVOKING and exhausted:
            grant.state = IRREVOCABLE
            grant.next_attempt_at = now + self.core.config.timings.irrevocable_retry
            event = self.core.moved(request, IRREVOCABLE, actor=SYSTEM,
                                    action=AuditAction.IRREVOCABLE,
                                    details={"grant_id": grant.id, "error": grant.last_error,
                                             "attempts": grant.revoke_attempts})
            return event, (NotificationEvent.IRREVOCABLE, {
                "grant_id": grant.id, "error": grant.last_error,
                "policy_names": grant.policy_names, "attempts": grant.revoke_attempts})
        if grant.state == IRREVOCABLE:
            delay = self.core.config.timings.irrevocable_retry
        else:
            delay = min(self.core.revoke_backoff * 2 ** (grant.revoke_attempts - 1),
                        self.core.revoke_backoff_cap)
        grant.next_attempt_at = now + delay
        return self.core.event(request, SYSTEM, AuditAction.REVOKE_FAILED, {
            "grant_id": grant.id, "error": grant.last_error,
            "attempts": grant.revoke_attempts,
            "next_attempt_at": grant.next_attempt_at.isoformat()}), None

    def end_active_by_reconcile(self, grant_id: str, error: str, *,
                                actor: str = RECONCILE_ACTOR) -> AccessRequest:
        """Reconcile found an active grant's policy gone and could not put it back, so no
        access is left on the principal. The request may leave `active` only through
        `revoking`: it goes active -> revoking -> revoked (reason "reconcile"), while the
        grant ends `failed` with `error`, since the access ended because the bot could not
        keep it in place, not because anyone revoked it. The requester is told."""
        with self.core.transaction() as session:
            grant = session.get(Grant, grant_id)
            if grant is None:
                raise NotFound(f"There is no grant {grant_id}.")
            request = self.core.locked(session, grant.request_id)
            grant = session.get_one(Grant, grant_id, populate_existing=True)
            if grant.state != ACTIVE or request.state != ACTIVE:
                raise InvalidTransition(f"it became {grant.state} while reconcile ran")
            grant.state, grant.last_error = FAILED, error
            grant.revoke_reason, grant.revoked_by = "reconcile", actor
            # A pending extension has nothing left to extend.
            request.extension_seconds = request.extension_requested_at = None
            details = {"grant_id": grant.id, "reason": "reconcile", "error": error}
            self.core.move(session, request, REVOKING, actor=actor, action=AuditAction.REVOKING,
                           details=details)
            self.core.move(session, request, REVOKED, actor=actor, action=AuditAction.REVOKED,
                           details=details)
        self.core.notify(NotificationEvent.REVOKED, request, grant_id=grant_id, reason="reconcile",
                         revoked_by=actor, error=error)
        return request


def _write_changed_rows(session: Session) -> None:
    """Write every row changed in this session (its request rows are locked by this
    transaction) with one executemany UPDATE per table and set of changed columns, and
    empty the session, so the flush has nothing left to write. For batches: the flush
    sends versioned rows (requests) one UPDATE and round trip at a time, to check each
    one's version, which the row locks make moot here. The version still goes up, for
    other sessions' optimistic checks."""
    if session.new or session.deleted:
        raise AssertionError("only changed rows can be written in bulk")
    groups: dict[tuple[Any, tuple[str, ...]], list[dict[str, Any]]] = {}
    for row in session.dirty:
        state: InstanceState[Any] = inspect(row)
        mapper = state.mapper
        # committed_state holds the attributes set since loading: what changed.
        names = tuple(sorted(key for key in state.committed_state
                             if key in mapper.column_attrs))
        if names:
            (key_column,) = mapper.primary_key
            groups.setdefault((mapper, names), []).append(
                {"row_key": state.dict[mapper.get_property_by_column(key_column).key],
                 **{f"new_{name}": state.dict[name] for name in names}})
    session.expunge_all()
    connection = session.connection()  # Core, past the ORM's autoflush
    for (mapper, names), params in groups.items():
        (key_column,) = mapper.primary_key
        new_values: dict[Any, Any] = {
            mapper.column_attrs[name].columns[0]: bindparam(f"new_{name}") for name in names}
        if mapper.version_id_col is not None:
            new_values[mapper.version_id_col] = mapper.version_id_col + 1
        # In key order, as the flush writes them, so two writers lock rows in one order.
        params.sort(key=lambda values: values["row_key"])
        connection.execute(update(mapper.local_table).where(key_column == bindparam("row_key"))
                           .values(new_values), params)
