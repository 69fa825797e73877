"""The request state machine. Pure core: it reaches IAM, Slack and the clock only through
the ports in bot.ports, and the database through a session factory.

    pending --(enough approvals)--> approved --> granting --> active --> revoking --> revoked
    pending --> denied | cancelled | timed_out      approved|granting --> failed
    revoking --> irrevocable --> revoked            active --(extension approved)--> active

Every transition runs in one transaction that locks the request row (SELECT ... FOR UPDATE
on PostgreSQL; SQLite writers are serialised by BEGIN IMMEDIATE, see bot.db) and appends
its audit event. IAM calls happen outside the lock, after the intent is committed, so a
crash in between leaves a row that reconciliation can finish.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import bindparam, func, inspect, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstanceState, Session, selectinload
from sqlalchemy.orm.exc import StaleDataError

from bot.alerts import Alert, Alerter, AlertRef, LoggingAlerter
from bot.audit import NewEvent, append_events
from bot.catalog import Catalog, CatalogEntry
from bot.config import ConfigError, OperatorConfig, Route
from bot.db import SessionFactory
from bot.decisions import (
    SYSTEM,
    Decision,
    Refusal,
    RequestFacts,
    RevokeReason,
    is_approved,
    may_cancel,
    may_extend,
    may_revoke,
    may_vote,
)
from bot.durations import format_duration
from bot.evidence import (
    AttachedDocument,
    combined_hash,
    evidence_summary,
    record_policy_evidence,
)
from bot.models import AccessRequest, Grant, Vote
from bot.ports import (
    ApproverDirectory,
    AttachedPolicy,
    Clock,
    Granter,
    GrantError,
    GrantPlan,
    Notification,
    NotificationEvent,
    Notifier,
    Pacing,
    PolicyKind,
    PrincipalDirectory,
    PrincipalError,
)
from bot.request_rules import reason_problem
from bot.states import (
    ACTIVE,
    APPROVED,
    CANCELLED,
    DENIED,
    FAILED,
    GRANTING,
    IRREVOCABLE,
    LIVE_STATES,
    OPEN_STATES,
    PENDING,
    REVOKED,
    REVOKING,
    TIMED_OUT,
    TRANSITIONS,
    RequestState,
)
from bot.targets import (
    ApproverMapping,
    IamTarget,
    IdentityCenterTarget,
    TargetError,
    access_route,
    account_of_target,
    parse_target,
    self_approval_decision,
)

log = logging.getLogger(__name__)


AUTO_APPROVER = "system:auto-approve"
RECONCILE_ACTOR = "system:reconcile"


class LifecycleError(Exception):
    """A request operation that cannot be done; the message is for the Slack user."""


class NotFound(LifecycleError):
    pass


class InvalidRequest(LifecycleError):
    """The request itself is malformed (reason, duration, entry, instance)."""


class NotAllowed(LifecycleError):
    """This person may not do this to this request."""


class SelfApproval(NotAllowed):
    pass


class InvalidTransition(LifecycleError):
    """The request is not in a state where this makes sense (e.g. already decided)."""


class DuplicateVote(LifecycleError):
    pass


class AlreadyActive(LifecycleError):
    """The principal already has an open request for this entry; extend it instead."""

    def __init__(self, message: str, existing_request_id: int) -> None:
        super().__init__(message)
        self.existing_request_id = existing_request_id


class ConcurrentChange(LifecycleError):
    pass


class GrantFailed(LifecycleError):
    pass


@dataclass(frozen=True)
class GrantContext:
    """Everything the policy compiler needs to build the plan for one grant."""

    grant_id: str
    entry_id: str
    principal_arn: str
    instance_arn: str | None
    start: datetime
    expires_at: datetime
    inline_usage: int  # characters other inline policies already use on the principal
    existing_policy_names: tuple[str, ...] = ()  # set when re-attaching for an extension


PlanBuilder = Callable[[GrantContext], GrantPlan]
_T = TypeVar("_T")


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


_REFUSAL_ERRORS: Mapping[Refusal, type[LifecycleError]] = {
    Refusal.WRONG_STATE: InvalidTransition,
    Refusal.SELF_APPROVAL: SelfApproval,
    Refusal.ALREADY_VOTED: DuplicateVote,
    Refusal.NO_APPROVERS: NotAllowed,
    Refusal.NOT_APPROVER: NotAllowed,
    Refusal.NOT_REQUESTER: NotAllowed,
    Refusal.NOT_SYSTEM: NotAllowed,
}


def _require(decision: Decision) -> None:
    """Raise the lifecycle error that matches a refused decision."""
    if not decision.allowed:
        error = _REFUSAL_ERRORS[decision.refusal] if decision.refusal else LifecycleError
        raise error(decision.reason)


def _facts(request: AccessRequest) -> RequestFacts:
    return RequestFacts(request.id, request.requester, request.state, request.tier,
                        extension_pending=request.extension_seconds is not None)


def _claim_of(grant: Grant) -> _ClaimedRevoke:
    return _ClaimedRevoke(grant.id, grant.request_id, grant.principal_arn,
                          cast(PolicyKind, grant.kind), tuple(grant.policy_names))


def new_grant_id() -> str:
    """Short, unique and safe in IAM policy names and URLs."""
    return uuid.uuid4().hex[:12]


def _fmt_duration(seconds: float) -> str:
    return format_duration(timedelta(seconds=int(seconds)))


class RequestService:
    def __init__(
        self,
        *,
        sessions: SessionFactory,
        catalog: Catalog,
        config: OperatorConfig,
        granter: Granter,
        notifier: Notifier,
        approvers: ApproverDirectory,
        principals: PrincipalDirectory,
        clock: Clock,
        plan_builder: PlanBuilder,
        max_revoke_attempts: int = 5,
        revoke_backoff: timedelta = timedelta(seconds=30),
        revoke_backoff_cap: timedelta = timedelta(minutes=10),
        claim_lease: timedelta = timedelta(minutes=5),
        # Shorter grants only make sense in the demo, which shows a whole expiry in seconds.
        min_duration: timedelta = timedelta(minutes=1),
        # A revoke IAM throttled (after botocore's own retries) is tried again this soon; it
        # does not count as an attempt, so throttling alone never makes a grant irrevocable.
        throttle_retry: timedelta = timedelta(seconds=5),
        # Where IAM requests queue behind the client-side rate limit; with it, a requester
        # whose grant will wait at least `queued_notice_after` is told so.
        pacing: Pacing | None = None,
        queued_notice_after: timedelta = timedelta(seconds=2),
        # An attach IAM still throttles after botocore's retries waits throttle_retry and
        # tries again, this many times, before the request fails: an approved grant is not
        # thrown away because the account is busy for a while.
        grant_throttle_retries: int = 12,
        sleep: Callable[[float], None] = time.sleep,
        alerter: Alerter | None = None,
    ) -> None:
        self.sessions = sessions
        self.catalog = catalog
        self.config = config
        self.granter = granter
        self.notifier = notifier
        self.approvers = approvers
        self.principals = principals
        self.clock = clock
        self.plan_builder = plan_builder
        self.max_revoke_attempts = max_revoke_attempts
        self.revoke_backoff = revoke_backoff
        self.revoke_backoff_cap = revoke_backoff_cap
        self.claim_lease = claim_lease
        self.min_duration = min_duration
        self.throttle_retry = throttle_retry
        self.pacing = pacing
        self.queued_notice_after = queued_notice_after
        self.grant_throttle_retries = grant_throttle_retries
        self.sleep = sleep
        # Failures that need a person (irrevocable grants, requests stuck between approval
        # and grant) are alerted from here, so every process that runs the lifecycle
        # alerts the same way; the notifier only tells the requester and the channel.
        self.alerter: Alerter = alerter or LoggingAlerter()

    # -- helpers -------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """One transaction; lost races and constraint hits become domain errors."""
        try:
            with self.sessions.begin() as session:
                yield session
        except StaleDataError:
            raise ConcurrentChange(
                "Someone else changed this request at the same moment; please try again."
            ) from None

    def _entry(self, entry_id: str) -> CatalogEntry:
        try:
            return self.catalog.get(entry_id)
        except KeyError:
            raise InvalidRequest(
                f"There is no catalog entry {entry_id!r}; try `/connect-access` with a "
                "description of what you need."
            ) from None

    def _route(self, request: AccessRequest) -> Route:
        return self.config.router.route_for(self._entry(request.entry_id))

    @staticmethod
    def _lock(session: Session, request_id: int, *, skip_locked: bool = False
              ) -> AccessRequest | None:
        query = select(AccessRequest).where(AccessRequest.id == request_id)
        query = query.with_for_update(skip_locked=skip_locked)
        return session.execute(
            query.execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def _locked(self, session: Session, request_id: int) -> AccessRequest:
        request = self._lock(session, request_id)
        if request is None:
            raise NotFound(f"There is no request #{request_id}.")
        return request

    def _move(self, session: Session, request: AccessRequest, to_state: RequestState, *,
              actor: str, action: str, details: Mapping[str, Any] | None = None) -> None:
        """Change state (checked against TRANSITIONS), stamp it and audit it."""
        append_events(session, [self._moved(request, to_state, actor=actor, action=action,
                                            details=details)])

    def _moved(self, request: AccessRequest, to_state: RequestState, *, actor: str, action: str,
               details: Mapping[str, Any] | None = None) -> NewEvent:
        """_move without the append: the caller appends the returned event (batches append
        many under one chain-head lock)."""
        if to_state not in TRANSITIONS.get(request.state, frozenset()):
            raise InvalidTransition(
                f"Request #{request.id} is {request.state.replace('_', ' ')}; "
                f"it cannot become {to_state.replace('_', ' ')}."
            )
        now = self.clock.now()
        request.state = to_state
        request.updated_at = now
        stamp = {APPROVED: "approved_at", DENIED: "denied_at", CANCELLED: "cancelled_at",
                 TIMED_OUT: "timed_out_at", GRANTING: "granting_at", ACTIVE: "granted_at",
                 FAILED: "failed_at", REVOKING: "revoke_requested_at", REVOKED: "revoked_at"}
        if to_state in stamp:
            setattr(request, stamp[to_state], now)
        return self._event(request, actor, action, {"to": to_state, **(details or {})})

    def _audit(self, session: Session, request: AccessRequest | None, actor: str, action: str,
               details: Mapping[str, Any]) -> None:
        append_events(session, [self._event(request, actor, action, details)])

    def _event(self, request: AccessRequest | None, actor: str, action: str,
               details: Mapping[str, Any]) -> NewEvent:
        return NewEvent(at=self.clock.now(), actor=actor, action=action,
                        request_id=None if request is None else request.id, details=details)

    def _notify(self, event: NotificationEvent, request: AccessRequest, **detail: Any) -> None:
        base = {"requester": request.requester, "entry_id": request.entry_id,
                "tier": request.tier, "state": request.state,
                "principal_arn": request.principal_arn,
                "approval_channel": request.approval_channel, "approval_ts": request.approval_ts}
        self.notifier.notify(Notification(event=event, request_id=request.id,
                                          detail={**base, **detail}))
        if event == "irrevocable":
            self._send_alert(request, Alert(
                kind="irrevocable",
                summary=(f"Access #{request.id} ({request.entry_id}) could not be removed "
                         f"from its principal after {detail.get('attempts')} attempt(s): "
                         f"{detail.get('error')}"),
                next_step=(
                    "Fix what the error names (the bot's IAM permissions, a deleted "
                    "principal) or delete the listed policies from the principal by hand. "
                    "The bot retries every "
                    f"{_fmt_duration(self.config.timings.irrevocable_retry.total_seconds())}"
                    " and follows up in this thread once they are gone; until then the "
                    "policy's own aws:CurrentTime condition still ends the access."),
                request_id=request.id, requester=request.requester,
                principal_arn=request.principal_arn,
                policy_names=tuple(detail.get("policy_names") or ()),
            ))
        elif (event == "revoked" and detail.get("after_irrevocable") and request.alert_ts
              and request.alert_channel):
            self._send_alert(request, Alert(
                kind="irrevocable_resolved",
                summary=f"Access #{request.id} ({request.entry_id}) has now been removed; "
                        "nothing of it is left on the principal.",
                next_step="Nothing more; the request is closed.",
                request_id=request.id, requester=request.requester,
                principal_arn=request.principal_arn,
                policy_names=tuple(detail.get("policy_names") or ()),
                follows_up=AlertRef(request.alert_channel, request.alert_ts),
            ))

    def _send_alert(self, request: AccessRequest, alert: Alert) -> None:
        """Alert, and remember where the first alert about a request went so the next one
        follows it up in its thread."""
        ref = self.alerter.alert(alert)
        if ref is None or alert.follows_up is not None:
            return
        request.alert_channel, request.alert_ts = ref.channel, ref.ts
        # A plain column write, not a transition: the request may be locked elsewhere for
        # a state change, which this must neither wait out for long nor conflict with.
        with self.sessions.begin() as session:
            session.execute(update(AccessRequest).where(AccessRequest.id == request.id)
                            .values(alert_channel=ref.channel, alert_ts=ref.ts))

    def _check_voter(self, session: Session, request: AccessRequest, approver: str,
                     mapping: ApproverMapping) -> Route:
        """Raise unless `approver` may vote on the locked `request` now (bot.decisions).
        `mapping`: the approver's own, from the principal directory (looked up before the
        request's row is locked, since it may call AWS)."""
        facts = _facts(request)
        if not facts.open_for_votes:  # refused as such (raises) before any look-up
            _require(may_vote(facts, approver, approvers=(), is_approver=False,
                              has_voted=False))
        route = self._route(request)
        has_voted = session.execute(
            select(Vote.id).where(Vote.request_id == request.id,
                                  Vote.approval_round == request.approval_round,
                                  Vote.approver == approver)
        ).first() is not None
        _require(may_vote(
            facts, approver, approvers=route.approvers,
            is_approver=approver in self.approvers.members(route.approvers),
            has_voted=has_voted,
            principal_check=self_approval_decision(request.requester, approver,
                                                   request.principal_arn, mapping)))
        return route

    @staticmethod
    def _active_grant(request: AccessRequest, session: Session) -> Grant | None:
        return session.execute(
            select(Grant).where(Grant.request_id == request.id,
                                Grant.state.in_((ACTIVE, REVOKING, IRREVOCABLE, GRANTING)))
            .order_by(Grant.created_at.desc()).limit(1)
        ).scalar_one_or_none()

    @staticmethod
    def _serialise_on(session: Session, key: str) -> None:
        """PostgreSQL: a transaction-scoped advisory lock so two submissions for the same
        entry and principal cannot both pass the 'already open' check."""
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                            {"key": zlib.crc32(key.encode())})

    # -- queries -------------------------------------------------------------------------

    def get(self, request_id: int) -> AccessRequest:
        """The request with its votes and grants loaded (detached, read-only use)."""
        with self.sessions() as session:
            request = session.execute(
                select(AccessRequest).where(AccessRequest.id == request_id)
                .options(selectinload(AccessRequest.votes), selectinload(AccessRequest.grants))
            ).scalar_one_or_none()
            if request is None:
                raise NotFound(f"There is no request #{request_id}.")
            return request

    def set_approval_message(self, request_id: int, channel: str, ts: str) -> None:
        """Remember where the approval message was posted (Slack calls this)."""
        with self._transaction() as session:
            request = self._locked(session, request_id)
            request.approval_channel, request.approval_ts = channel, ts

    # -- submit / decide -----------------------------------------------------------------

    def submit(self, *, requester: str, entry_id: str, reason: str, duration: timedelta,
               instance: str | None = None) -> AccessRequest:
        entry = self._entry(entry_id)
        route = self.config.router.route_for(entry)
        reason = reason.strip()
        if problem := reason_problem(reason):
            raise InvalidRequest(problem)
        seconds = int(duration.total_seconds())
        if duration < self.min_duration:
            raise InvalidRequest(
                f"The duration must be at least {_fmt_duration(self.min_duration.total_seconds())}."
            )
        if duration > route.max_duration:
            raise InvalidRequest(
                f"{entry.name} can be granted for at most "
                f"{_fmt_duration(route.max_duration.total_seconds())}; you asked for "
                f"{_fmt_duration(seconds)}."
            )
        instance_arn = instance_alias = None
        if self.config.instances or instance is not None:
            try:
                chosen = self.config.instance(instance)
            except ConfigError as exc:
                raise InvalidRequest(exc.fault) from None
            instance_arn, instance_alias = chosen.arn, chosen.alias
        try:
            principal_arn = self.principals.principal_for(requester)
        except PrincipalError as exc:
            raise NotAllowed(str(exc)) from None
        target_detail = self._target_detail(principal_arn, instance_arn)

        now = self.clock.now()
        with self._transaction() as session:
            self._serialise_on(session, f"{principal_arn}|{entry.id}")
            existing = session.execute(
                select(AccessRequest).where(AccessRequest.principal_arn == principal_arn,
                                            AccessRequest.entry_id == entry.id,
                                            AccessRequest.state.in_(OPEN_STATES))
                .limit(1)
            ).scalar_one_or_none()
            if existing is not None:
                hint = ("ask for an extension on it instead"
                        if existing.state == ACTIVE else "wait for it to finish")
                raise AlreadyActive(
                    f"You already have request #{existing.id} for {entry.name} "
                    f"({existing.state.replace('_', ' ')}); {hint}.",
                    existing.id,
                )
            request = AccessRequest(
                requester=requester, principal_arn=principal_arn, entry_id=entry.id,
                entry_hash=entry.content_hash(), tier=route.tier, instance_arn=instance_arn,
                instance_alias=instance_alias, reason=reason, duration_seconds=seconds,
                group_members=target_detail.get("group_members"),
                state=PENDING, required_approvals=route.approvals, approval_round=0,
                created_at=now, updated_at=now,
            )
            session.add(request)
            session.flush()
            self._audit(session, request, requester, "submitted", {
                "entry_id": entry.id, "entry_hash": request.entry_hash, "tier": route.tier,
                "principal_arn": principal_arn, "instance_arn": instance_arn,
                "reason": reason, "duration_seconds": seconds,
                "required_approvals": route.approvals, **target_detail})
        self._notify("submitted", request, reason=reason, duration_seconds=seconds,
                     channel=route.channel, approvers=list(route.approvers),
                     required_approvals=route.approvals, auto_approve=route.auto_approve,
                     **target_detail)
        if route.auto_approve:
            with self._transaction() as session:
                request = self._locked(session, request.id)
                self._move(session, request, APPROVED, actor=AUTO_APPROVER, action="approved",
                           details={"auto_approve": True})
            self._notify("approved", request, auto_approve=True)
            return self.grant(request.id)
        return request

    def _target_detail(self, ref: str, instance_arn: str | None) -> dict[str, Any]:
        """Check the target may receive a grant here, and what approvers should see about
        it: its kind, and for a group how many IAM users it reaches."""
        try:
            target = parse_target(ref)
            account_of_target(target, instance_arn)
        except TargetError as exc:
            raise NotAllowed(str(exc)) from None
        if isinstance(target, IdentityCenterTarget) and self.config.identity_center is None:
            raise NotAllowed(
                f"{target.describe()} needs the bot's `identity_center:` config; ask an "
                "administrator to add it.")
        detail: dict[str, Any] = {"target_kind": target.kind}
        if isinstance(target, IamTarget) and target.is_group:
            if not self.config.allow_group_targets:
                raise NotAllowed(
                    f"{ref} is an IAM group, and a grant to it would reach every member; "
                    "this bot does not grant to groups (allow_group_targets is off). Ask an "
                    "administrator to map your own role or user.")
            try:
                detail["group_members"] = self.principals.group_member_count(ref)
            except PrincipalError as exc:
                raise NotAllowed(str(exc)) from None
        detail["access"] = self._access(ref, instance_arn,
                                        group_members=detail.get("group_members"))
        return detail

    def _access(self, ref: str, instance_arn: str | None, policy_name: str | None = None,
                group_members: int | None = None) -> dict[str, Any]:
        """How the person reaches the access, for the approval message and the DM."""
        portal = self.config.identity_center.access_portal if self.config.identity_center \
            else None
        return access_route(ref, instance_arn, portal_url=portal, grant_name=policy_name,
                            group_members=group_members).as_dict()

    def approve(self, request_id: int, approver: str, comment: str | None = None
                ) -> AccessRequest:
        """Record an approval. The vote that reaches the tier's count approves the request
        (or the pending extension) and this call goes on to grant it."""
        extended_to: datetime | None = None
        mapping = self.principals.approver_mapping(approver)
        with self._transaction() as session:
            request = self._locked(session, request_id)
            extending = request.state == ACTIVE and request.extension_seconds is not None
            route = self._check_voter(session, request, approver, mapping)
            approvals = self._vote(session, request, approver, "approve", comment)
            approved = is_approved(approvals, request.required_approvals).allowed
            if approved and extending:
                extended_to = self._apply_extension(session, request, approver)
            elif approved:
                self._move(session, request, APPROVED, actor=approver, action="approved",
                           details={"approvals": approvals})
        self._notify("vote", request, approver=approver, decision="approve", comment=comment,
                     approvals=approvals, required_approvals=request.required_approvals,
                     extension=extending, channel=route.channel)
        if extended_to is not None:
            self._notify("extended", request, approver=approver,
                         expires_at=extended_to.isoformat())
            return request
        if approved:
            self._notify("approved", request, approver=approver)
            return self.grant(request.id)
        return request

    def deny(self, request_id: int, approver: str, comment: str | None = None
             ) -> AccessRequest:
        """Any one deny ends the request (or its pending extension)."""
        mapping = self.principals.approver_mapping(approver)
        with self._transaction() as session:
            request = self._locked(session, request_id)
            extending = request.state == ACTIVE and request.extension_seconds is not None
            self._check_voter(session, request, approver, mapping)
            self._vote(session, request, approver, "deny", comment)
            if extending:
                request.extension_seconds = None
                request.extension_requested_at = None
                request.updated_at = self.clock.now()
                self._audit(session, request, approver, "extension_denied",
                            {"comment": comment})
            else:
                self._move(session, request, DENIED, actor=approver, action="denied",
                           details={"comment": comment})
        self._notify("denied", request, approver=approver, comment=comment, extension=extending)
        return request

    def _vote(self, session: Session, request: AccessRequest, approver: str, decision: str,
              comment: str | None) -> int:
        """Add one vote in the current round; return the round's approval count."""
        try:
            with session.begin_nested():
                session.add(Vote(request_id=request.id, approval_round=request.approval_round,
                                 approver=approver, decision=decision, comment=comment,
                                 at=self.clock.now()))
        except IntegrityError:
            # Two clicks that both passed _check_voter: the unique index decides.
            raise DuplicateVote(f"You have already voted on request #{request.id}; each "
                                "approver votes once.") from None
        request.updated_at = self.clock.now()
        self._audit(session, request, approver, "vote",
                    {"decision": decision, "comment": comment, "round": request.approval_round})
        count = session.execute(
            select(func.count()).select_from(Vote).where(
                Vote.request_id == request.id, Vote.approval_round == request.approval_round,
                Vote.decision == "approve")
        ).scalar_one()
        return int(count)

    def cancel(self, request_id: int, actor: str) -> AccessRequest:
        with self._transaction() as session:
            request = self._locked(session, request_id)
            _require(may_cancel(_facts(request), actor))
            self._move(session, request, CANCELLED, actor=actor, action="cancelled")
        self._notify("cancelled", request)
        return request

    def expire_pending(self, now: datetime | None = None) -> list[int]:
        """Time out pending requests older than timings.pending_ttl; return their ids."""
        now = now or self.clock.now()
        cutoff = now - self.config.timings.pending_ttl
        with self.sessions() as session:
            ids = list(session.execute(
                select(AccessRequest.id).where(AccessRequest.state == PENDING,
                                               AccessRequest.created_at <= cutoff)
                .order_by(AccessRequest.id)
            ).scalars())
        timed_out: list[int] = []
        for request_id in ids:
            with self._transaction() as session:
                request = self._lock(session, request_id, skip_locked=True)
                if request is None or request.state != PENDING or request.created_at > cutoff:
                    continue  # decided meanwhile, or another worker has it
                self._move(session, request, TIMED_OUT, actor=SYSTEM, action="timed_out",
                           details={"pending_ttl_seconds":
                                    int(self.config.timings.pending_ttl.total_seconds())})
            timed_out.append(request_id)
            self._notify("timed_out", request)
        return timed_out

    def pending_reminders(self, now: datetime | None = None) -> list[int]:
        """Nudge approvers once about requests pending longer than pending_reminder_after."""
        now = now or self.clock.now()
        cutoff = now - self.config.timings.pending_reminder_after
        reminded: list[AccessRequest] = []
        with self._transaction() as session:
            for request in session.execute(
                select(AccessRequest).where(AccessRequest.state == PENDING,
                                            AccessRequest.reminded_at.is_(None),
                                            AccessRequest.created_at <= cutoff)
                .with_for_update(skip_locked=True)
            ).scalars():
                request.reminded_at = now
                reminded.append(request)
        for request in reminded:
            self._notify("pending_reminder", request)
        return [r.id for r in reminded]

    def expiring_soon(self, now: datetime | None = None) -> list[str]:
        """Tell requesters once that their access ends within remind_before_expiry."""
        now = now or self.clock.now()
        horizon = now + self.config.timings.remind_before_expiry
        told: list[tuple[AccessRequest, Grant]] = []
        with self._transaction() as session:
            for grant in session.execute(
                select(Grant).where(Grant.state == ACTIVE, Grant.expires_at <= horizon,
                                    Grant.expires_at > now, Grant.expiry_reminded_at.is_(None))
                .with_for_update(skip_locked=True)
            ).scalars():
                grant.expiry_reminded_at = now
                told.append((grant.request, grant))
        for request, grant in told:
            self._notify("expiring_soon", request, grant_id=grant.id,
                         expires_at=grant.expires_at.isoformat())
        return [g.id for _, g in told]

    # -- grant ---------------------------------------------------------------------------

    def grant(self, request_id: int) -> AccessRequest:
        """approved -> granting (committed with the planned policy names) -> IAM attach ->
        active, or failed with nothing left attached."""
        with self.sessions() as session:
            request = session.get(AccessRequest, request_id)
            if request is None:
                raise NotFound(f"There is no request #{request_id}.")
            if request.state != APPROVED:
                raise InvalidTransition(
                    f"Request #{request.id} is {request.state.replace('_', ' ')}, not approved; "
                    "it cannot be granted now.")
        start = self.clock.now()
        principal_arn = request.principal_arn
        queued = self._watch_queue(request, start)
        context = GrantContext(
            grant_id=new_grant_id(), entry_id=request.entry_id,
            principal_arn=request.principal_arn, instance_arn=request.instance_arn,
            start=start, expires_at=start + timedelta(seconds=request.duration_seconds),
            inline_usage=0,
        )
        try:
            usage = self._patiently(queued, lambda: self.granter.inline_usage(principal_arn))
            context = replace(context, inline_usage=usage)
            plan = self.plan_builder(context)
        except GrantError as exc:
            queued.stop()
            return self._fail_before_attach(request_id, f"could not read the principal: {exc}")
        except Exception as exc:
            queued.stop()
            # Whatever stops the plan being built (a policy over quota, a bad entry) must
            # end the request as failed, never leave it approved with nobody told.
            log.exception("building the grant plan for request %s failed", request_id)
            return self._fail_before_attach(request_id, str(exc) or type(exc).__name__)

        with self._transaction() as session:
            request = self._locked(session, request_id)
            if request.state != APPROVED:
                # Another process (the scheduler recovering it, or a second click) took it
                # between our check and this lock; its grant is the one that counts.
                log.info("request %s became %s while a grant was planned; leaving it to "
                         "whoever moved it", request_id, request.state)
                queued.stop()
                return request
            self._move(session, request, GRANTING, actor=SYSTEM, action="granting", details={
                "grant_id": plan.grant_id, "policy_names": [p.name for p in plan.policies],
                "kind": plan.kind, "expires_at": context.expires_at.isoformat()})
            grant = Grant(
                id=plan.grant_id, request_id=request.id,
                policy_names=[p.name for p in plan.policies], kind=plan.kind,
                principal_arn=plan.principal_arn,
                account=account_of_target(parse_target(plan.principal_arn),
                                          request.instance_arn),
                state=GRANTING, created_at=start, starts_at=start,
                expires_at=context.expires_at, revoke_attempts=0,
            )
            session.add(grant)

        try:
            attached = self._patiently(queued, lambda: self.granter.attach(plan))
        except GrantError as exc:
            queued.stop()
            if self._settled_elsewhere(plan.grant_id):
                return self.get(request_id)
            self._cleanup_partial(plan)
            with self._transaction() as session:
                request = self._locked(session, request_id)
                grant = session.get_one(Grant, plan.grant_id)
                grant.state, grant.last_error = FAILED, str(exc)
                self._move(session, request, FAILED, actor=SYSTEM, action="grant_failed",
                           details={"grant_id": grant.id, "error": str(exc), "code": exc.code})
            self._notify("failed", request, error=str(exc), grant_id=plan.grant_id)
            return request
        queued.stop()

        with self._transaction() as session:
            request = self._locked(session, request_id)
            grant = session.get_one(Grant, plan.grant_id, populate_existing=True)
            if grant.state != GRANTING:
                log.info("grant %s was settled (%s) by another process meanwhile",
                         grant.id, grant.state)
                return request
            grant.state, grant.attached_at = ACTIVE, self.clock.now()
            grant.document_hash = combined_hash([a.document_hash for a in attached])
            documents = _attached_documents(plan, attached)
            [event] = append_events(session, [self._moved(
                request, ACTIVE, actor=SYSTEM, action="granted", details={
                    "grant_id": grant.id, "policy_names": grant.policy_names,
                    "document_hash": grant.document_hash,
                    "expires_at": grant.expires_at.isoformat(),
                    "policies": evidence_summary(documents)})])
            record_policy_evidence(session, grant_id=grant.id, request_id=request.id,
                                   audit_seq=event.seq, attached_at=self.clock.now(),
                                   documents=documents)
        self._notify("granted", request, grant_id=grant.id, policy_names=grant.policy_names,
                     expires_at=grant.expires_at.isoformat(),
                     access=self._access(request.principal_arn, request.instance_arn,
                                         grant.policy_names[0], request.group_members))
        return request

    def _watch_queue(self, request: AccessRequest, now: datetime) -> _QueuedNotice:
        """Tell the requester, once, when their grant waits behind IAM's rate limit (nothing
        is wrong; it will be granted): at once when it has waited since approval, or the
        IAM requests queued ahead of it will make it wait, for `queued_notice_after`; or
        when the grant is still not done that long from now while requests queue for the
        limit; or when IAM throttles it (see _patiently)."""
        notice = _QueuedNotice(self, request)
        if self.pacing is None:
            return notice
        pacing, principal_arn = self.pacing, request.principal_arn
        threshold = self.queued_notice_after.total_seconds()
        ahead = pacing.expected_grant_wait(principal_arn)
        waited = 0.0 if request.approved_at is None else max(
            0.0, (now - request.approved_at).total_seconds())
        if ahead > 0 and waited + ahead >= threshold:
            notice.tell(waited, ahead)
        else:
            notice.tell_later(threshold, lambda: pacing.expected_grant_wait(principal_arn))
        return notice

    def _patiently(self, queued: _QueuedNotice, call: Callable[[], _T]) -> _T:
        """call(), tried again after `throttle_retry` while IAM throttles it (botocore has
        retried each time already), at most grant_throttle_retries times; the requester
        hears (once) that their grant is queued. Every granter call is idempotent, so
        trying again is safe."""
        for retry in range(self.grant_throttle_retries + 1):
            try:
                return call()
            except GrantError as exc:
                if not exc.throttled or retry == self.grant_throttle_retries:
                    raise
                queued.tell(None, self.throttle_retry.total_seconds())
                log.warning("IAM throttled the grant for request %s; trying again in %s",
                            queued.request.id, self.throttle_retry)
                self.sleep(self.throttle_retry.total_seconds())
        raise AssertionError("unreachable")  # the loop returns or raises

    def _settled_elsewhere(self, grant_id: str) -> bool:
        """Whether a grant this process was attaching has been settled by another (the
        scheduler's recovery): then its outcome stands and this one's failure is moot."""
        with self.sessions() as session:
            state = session.execute(select(Grant.state).where(Grant.id == grant_id)).scalar()
        return state != GRANTING

    def _cleanup_partial(self, plan: GrantPlan) -> None:
        """After a failed attach, remove whatever part of the plan may have landed."""
        try:
            self.granter.revoke(plan.principal_arn, plan.kind, [p.name for p in plan.policies])
        except GrantError:
            log.warning("could not clean up after failed attach of grant %s", plan.grant_id)

    def _fail_before_attach(self, request_id: int, error: str) -> AccessRequest:
        with self._transaction() as session:
            request = self._locked(session, request_id)
            self._move(session, request, FAILED, actor=SYSTEM, action="grant_failed",
                       details={"error": error, "attached": False})
        self._notify("failed", request, error=error)
        return request

    # -- recovery of requests stuck between approval and grant ---------------------------

    def unsettled(self) -> dict[int, int]:
        """Requests now `approved` or `granting`: id -> row version. A caller that sees
        one again at the same version a while later knows nobody has moved it since."""
        with self.sessions() as session:
            return {request_id: version for request_id, version in session.execute(
                select(AccessRequest.id, AccessRequest.version)
                .where(AccessRequest.state.in_((APPROVED, GRANTING))))}

    def recover_stuck(self, seen: Mapping[int, int], now: datetime | None = None
                      ) -> list[int]:
        """Settle the requests of `seen` (from `unsettled`, a whole interval ago) that are
        still `approved` or `granting` at the version seen: the process granting them
        died (a web worker killed mid-burst, a deploy). Stillness is judged by the row's
        version, not by timestamps, so clock skew between hosts cannot make a live grant
        look abandoned. Returns the ids of the requests settled.

        - approved: granted now, for its full duration, if it was approved no longer ago
          than that duration (the approval still means what the approvers agreed to);
          otherwise failed, nothing attached.
        - granting: its recorded plan is rebuilt and attached again (attaching the same plan
          twice is a no-op), keeping the planned expiry, if at least half of the window is
          left; otherwise, or when the plan cannot be rebuilt or attached, whatever part
          of it reached IAM is removed and it fails.

        Either way the requester is told (granted / failed) and may ask again, and the
        alerts channel hears of it. Safe beside a process that is still granting: every
        step is a checked transition under the request lock, and the loser leaves it be.
        """
        now = now or self.clock.now()
        still = {request_id for request_id, version in self.unsettled().items()
                 if seen.get(request_id) == version}
        if not still:
            return []
        with self.sessions() as session:
            rows = session.execute(
                select(AccessRequest.id, AccessRequest.state, Grant.id)
                .outerjoin(Grant, (Grant.request_id == AccessRequest.id)
                           & (Grant.state == GRANTING))
                .where(AccessRequest.id.in_(still)).order_by(AccessRequest.id)).all()
        settled: list[int] = []
        for request_id, state, grant_id in rows:
            if state == APPROVED:
                outcome = self._recover_approved(request_id, now)
            elif grant_id is not None:
                outcome = self._recover_granting(grant_id, now)
            else:
                continue
            if outcome is not None:
                settled.append(outcome)
        return settled

    def _recover_approved(self, request_id: int, now: datetime) -> int | None:
        request = self.get(request_id)
        if request.state != APPROVED:
            return None
        approved_at = request.approved_at or request.updated_at
        waited = now - approved_at
        if waited <= timedelta(seconds=request.duration_seconds):
            try:
                result = self.grant(request_id)
            except LifecycleError as exc:
                log.info("recovering request %s: %s", request_id, exc)
                return None
            outcome = ("granted it now" if result.state == ACTIVE
                       else f"tried to grant it; it is {result.state.replace('_', ' ')}")
        else:
            try:
                result = self._fail_before_attach(
                    request_id, f"it was approved {_fmt_duration(waited.total_seconds())} "
                    "ago but never granted (the bot stopped), which is longer than the "
                    "access asked for; nothing was attached. Request it again.")
            except LifecycleError as exc:
                log.info("recovering request %s: %s", request_id, exc)
                return None
            outcome = "failed it (too long after the approval); nothing was attached"
        self._alert_recovered(result, "approved", outcome, ())
        return request_id

    def _recover_granting(self, grant_id: str, now: datetime) -> int | None:
        with self.sessions() as session:
            grant = session.get(Grant, grant_id)
            if grant is None or grant.state != GRANTING:
                return None
            request = session.get_one(AccessRequest, grant.request_id)
        names = tuple(grant.policy_names)
        kind = cast(PolicyKind, grant.kind)
        window = grant.expires_at - grant.starts_at
        problem = ""
        attached: tuple[Any, ...] = ()
        if grant.expires_at - now < window / 2:
            problem = "less than half of its time was left"
        else:
            try:
                plan = self.plan_builder(rebuild_context(grant, request))
                if plan.kind != kind or tuple(p.name for p in plan.policies) != names:
                    raise GrantError("the rebuilt plan differs from the recorded one",
                                     transient=False)
                attached = self.granter.attach(plan)
            except GrantError as exc:
                if exc.throttled:
                    return None  # IAM is busy, not refusing: the next sweep tries again
                problem = f"its policy could not be attached again ({exc})"
            except Exception as exc:  # any other refusal: clean up and fail below
                problem = f"its policy could not be attached again ({exc})"
        if not problem:
            with self._transaction() as session:
                request = self._locked(session, grant.request_id)
                row = session.get_one(Grant, grant_id, populate_existing=True)
                if row.state != GRANTING:
                    return None  # the process that was attaching it finished meanwhile
                row.state, row.attached_at = ACTIVE, self.clock.now()
                row.document_hash = combined_hash([a.document_hash for a in attached])
                self._move(session, request, ACTIVE, actor=SYSTEM, action="granted",
                           details={"grant_id": row.id, "recovered": True,
                                    "policy_names": list(names),
                                    "expires_at": row.expires_at.isoformat()})
            self._notify("granted", request, grant_id=grant_id, policy_names=list(names),
                         expires_at=grant.expires_at.isoformat(), recovered=True)
            self._alert_recovered(request, "granting", "attached it again, with the "
                                  "expiry that was planned", names)
            return request.id
        try:
            self.granter.revoke(grant.principal_arn, kind, names)
        except GrantError as exc:
            if exc.throttled:
                return None  # the next sweep tries again
            # Cannot tell what is attached: it must stay visible, not be called failed.
            if not request.alert_ts:
                self._send_alert(request, Alert(
                    kind="stuck_request",
                    summary=(f"Request #{request.id} ({request.entry_id}) is stuck "
                             f"granting: {problem}, and removing what may have reached IAM "
                             f"failed too: {exc}"),
                    next_step="Fix what the error names, or delete the listed policies "
                              "from the principal by hand; the scheduler retries every "
                              "sweep and settles it once it can.",
                    request_id=request.id, requester=request.requester,
                    principal_arn=grant.principal_arn, policy_names=names))
            return None
        error = (f"the bot stopped while granting this and {problem}; whatever reached "
                 "IAM was removed, so nothing is granted. Request it again.")
        with self._transaction() as session:
            request = self._locked(session, grant.request_id)
            row = session.get_one(Grant, grant_id, populate_existing=True)
            if row.state != GRANTING:
                return None
            row.state, row.last_error = FAILED, error
            self._move(session, request, FAILED, actor=SYSTEM, action="grant_failed",
                       details={"grant_id": row.id, "recovered": True, "error": error})
        self._notify("failed", request, grant_id=grant_id, error=error)
        self._alert_recovered(request, "granting", f"failed it ({problem}) and removed "
                              "whatever reached IAM", names)
        return request.id

    def _alert_recovered(self, request: AccessRequest, was: str, outcome: str,
                         policy_names: tuple[str, ...]) -> None:
        self._send_alert(request, Alert(
            kind="stuck_request",
            summary=(f"Request #{request.id} ({request.entry_id}) was left {was} by a "
                     f"process that stopped; the scheduler {outcome}."),
            next_step=("Nothing for this request (the requester was told). Find out why "
                       "the web process stopped mid-grant (crash, OOM kill, deploy without "
                       "graceful shutdown)."),
            request_id=request.id, requester=request.requester,
            principal_arn=request.principal_arn, policy_names=policy_names))

    def stuck_grants(self, older_than: timedelta = timedelta(minutes=5),
                     now: datetime | None = None) -> list[Grant]:
        """Grants left in `granting` (the process died between commit and attach, or
        between attach and commit), for reconciliation to check against IAM."""
        cutoff = (now or self.clock.now()) - older_than
        with self.sessions() as session:
            return list(session.execute(
                select(Grant).where(Grant.state == GRANTING, Grant.created_at <= cutoff)
                .order_by(Grant.created_at)
            ).scalars())

    def finish_stuck_grant(self, grant_id: str, *, attached: bool,
                           actor: str = RECONCILE_ACTOR) -> AccessRequest:
        """Settle a grant stuck in `granting` after reconciliation looked at IAM: the
        policies are there (active, expiry as planned) or not (failed)."""
        with self._transaction() as session:
            grant = session.get(Grant, grant_id)
            if grant is None:
                raise NotFound(f"There is no grant {grant_id}.")
            request = self._locked(session, grant.request_id)
            grant = session.get_one(Grant, grant_id, populate_existing=True)
            if grant.state != GRANTING:
                raise InvalidTransition(f"Grant {grant_id} is {grant.state}, not granting.")
            if attached:
                grant.state, grant.attached_at = ACTIVE, self.clock.now()
                self._move(session, request, ACTIVE, actor=actor, action="granted",
                           details={"grant_id": grant.id, "recovered": True,
                                    "expires_at": grant.expires_at.isoformat()})
            else:
                grant.state, grant.last_error = FAILED, "not attached (found by reconciliation)"
                self._move(session, request, FAILED, actor=actor, action="grant_failed",
                           details={"grant_id": grant.id, "recovered": True})
        if attached:
            self._notify("granted", request, grant_id=grant.id, policy_names=grant.policy_names,
                         expires_at=grant.expires_at.isoformat())
        else:
            self._notify("failed", request, grant_id=grant.id, error=grant.last_error)
        return request

    def end_active_by_reconcile(self, grant_id: str, error: str, *,
                                actor: str = RECONCILE_ACTOR) -> AccessRequest:
        """Reconcile found an active grant's policy gone and could not put it back, so no
        access is left on the principal. The request may leave `active` only through
        `revoking`: it goes active -> revoking -> revoked (reason "reconcile"), while the
        grant ends `failed` with `error`, since the access ended because the bot could not
        keep it in place, not because anyone revoked it. The requester is told."""
        with self._transaction() as session:
            grant = session.get(Grant, grant_id)
            if grant is None:
                raise NotFound(f"There is no grant {grant_id}.")
            request = self._locked(session, grant.request_id)
            grant = session.get_one(Grant, grant_id, populate_existing=True)
            if grant.state != ACTIVE or request.state != ACTIVE:
                raise InvalidTransition(f"it became {grant.state} while reconcile ran")
            grant.state, grant.last_error = FAILED, error
            grant.revoke_reason, grant.revoked_by = "reconcile", actor
            # A pending extension has nothing left to extend.
            request.extension_seconds = request.extension_requested_at = None
            details = {"grant_id": grant.id, "reason": "reconcile", "error": error}
            self._move(session, request, REVOKING, actor=actor, action="revoking",
                       details=details)
            self._move(session, request, REVOKED, actor=actor, action="revoked",
                       details=details)
        self._notify("revoked", request, grant_id=grant_id, reason="reconcile",
                     revoked_by=actor, error=error)
        return request

    # -- extension -----------------------------------------------------------------------

    def request_extension(self, request_id: int, actor: str, extra: timedelta
                          ) -> AccessRequest:
        """Ask for more time on active access; it goes through the tier's approvals again."""
        extended_to: datetime | None = None
        with self._transaction() as session:
            request = self._locked(session, request_id)
            _require(may_extend(_facts(request), actor))
            route = self._route(request)
            seconds = int(extra.total_seconds())
            if seconds < 60 or extra > route.max_duration:
                raise InvalidRequest(
                    f"An extension must be between 1 minute and "
                    f"{_fmt_duration(route.max_duration.total_seconds())}.")
            total = request.duration_seconds + seconds
            limit = route.total_limit.total_seconds()
            if total > limit:
                raise InvalidRequest(
                    f"Request #{request.id} has had {_fmt_duration(request.duration_seconds)} "
                    f"so far; {_fmt_duration(seconds)} more would make "
                    f"{_fmt_duration(total)}, over the {_fmt_duration(limit)} a "
                    f"{request.tier}-tier request may last in total. Request the access again "
                    "instead, so it is approved afresh.")
            # A human approves anything past the tier's own maximum, even on an
            # auto-approved tier: otherwise access could be stretched with nobody looking.
            auto = route.auto_approve and total <= route.max_duration.total_seconds()
            if not auto and not route.approvers:
                raise InvalidRequest(
                    f"Extending request #{request.id} to {_fmt_duration(total)} needs an "
                    f"approver, and none is configured for {request.tier}-tier requests. "
                    "Request the access again instead.")
            request.extension_seconds = seconds
            request.extension_requested_at = self.clock.now()
            request.approval_round += 1
            request.required_approvals = route.approvals
            request.updated_at = self.clock.now()
            self._audit(session, request, actor, "extension_requested",
                        {"extension_seconds": seconds, "round": request.approval_round})
            if auto:
                extended_to = self._apply_extension(session, request, AUTO_APPROVER)
        self._notify("extension_requested", request, extension_seconds=seconds,
                     channel=route.channel, approvers=list(route.approvers),
                     required_approvals=route.approvals,
                     auto_approve=extended_to is not None)
        if extended_to is not None:
            self._notify("extended", request, approver=AUTO_APPROVER,
                         expires_at=extended_to.isoformat())
        return request

    def _apply_extension(self, session: Session, request: AccessRequest, actor: str
                         ) -> datetime:
        """Re-attach the policy with the later expiry (its aws:CurrentTime bound moves too),
        then record it. Runs under the request lock; if IAM refuses, the whole
        transaction (including the deciding vote) rolls back and the approver is told."""
        grant = self._active_grant(request, session)
        extension = request.extension_seconds
        if grant is None or grant.state != ACTIVE or extension is None:
            raise InvalidTransition(f"Request #{request.id} has no active grant to extend.")
        now = self.clock.now()
        new_expiry = max(grant.expires_at, now) + timedelta(seconds=extension)
        names = tuple(grant.policy_names)
        try:
            context = GrantContext(
                grant_id=grant.id, entry_id=request.entry_id,
                principal_arn=request.principal_arn, instance_arn=request.instance_arn,
                start=grant.starts_at, expires_at=new_expiry,
                inline_usage=self.granter.inline_usage(request.principal_arn, exclude=names),
                existing_policy_names=names,
            )
            plan = self.plan_builder(context)
            attached = self.granter.attach(plan)
        except GrantError as exc:
            raise GrantFailed(
                f"Could not extend request #{request.id}: {exc}. Nothing changed; try again."
            ) from None
        old_expiry = grant.expires_at
        grant.expires_at = new_expiry
        grant.expiry_reminded_at = None
        grant.document_hash = combined_hash([a.document_hash for a in attached])
        request.duration_seconds += extension
        request.extension_seconds = None
        request.extension_requested_at = None
        request.updated_at = now
        documents = _attached_documents(plan, attached)
        [event] = append_events(session, [self._event(request, actor, "extended", {
            "grant_id": grant.id, "old_expires_at": old_expiry.isoformat(),
            "expires_at": new_expiry.isoformat(), "extension_seconds": extension,
            "policies": evidence_summary(documents)})])
        record_policy_evidence(session, grant_id=grant.id, request_id=request.id,
                               audit_seq=event.seq, attached_at=now, documents=documents)
        return new_expiry

    # -- revoke --------------------------------------------------------------------------

    def revoke(self, request_id: int, actor: str, reason: RevokeReason) -> RevocationOutcome:
        """Take active access away: by the requester ("I'm done"), an approver, or expiry."""
        with self._transaction() as session:
            request = self._locked(session, request_id)
            is_approver = reason == "approver" and actor in self.approvers.members(
                self._route(request).approvers)
            _require(may_revoke(_facts(request), actor, reason, is_approver=is_approver))
            grant = self._start_revoking(session, request, actor, reason)
            claim = _claim_of(grant)
        # The same attempt and settle as the batch's, for this one grant.
        outcomes = self._revoke_claimed([claim])
        if outcomes:
            return outcomes[0]
        # Settled by another worker meanwhile (possible only once our lease ran out).
        with self.sessions() as session:
            grant = session.get_one(Grant, claim.grant_id)
            return RevocationOutcome(grant.id, request_id, grant.state, grant.last_error)

    def _start_revoking(self, session: Session, request: AccessRequest, actor: str,
                        reason: RevokeReason) -> Grant:
        grant = self._active_grant(request, session)
        if grant is None:
            raise InvalidTransition(f"Request #{request.id} has no grant to revoke.")
        append_events(session, [self._begin_revoking(request, grant, actor, reason)])
        return grant

    def _begin_revoking(self, request: AccessRequest, grant: Grant, actor: str,
                        reason: RevokeReason) -> NewEvent:
        """Move an active grant and its request to revoking; returns the audit event."""
        now = self.clock.now()
        grant.state, grant.revoke_reason, grant.revoked_by = REVOKING, reason, actor
        # Claimed for the lease: a sweeper elsewhere leaves it alone until then.
        grant.next_attempt_at = now + self.claim_lease
        request.extension_seconds = request.extension_requested_at = None
        return self._moved(request, REVOKING, actor=actor, action="revoking",
                           details={"grant_id": grant.id, "reason": reason})

    def due_for_revocation(self, now: datetime | None = None) -> list[str]:
        """Grant ids the sweeper should act on: expired active ones, and revocations whose
        next attempt is due (including irrevocable ones being re-tried)."""
        now = now or self.clock.now()
        with self.sessions() as session:
            return list(session.execute(
                select(Grant.id).where(or_(
                    (Grant.state == ACTIVE) & (Grant.expires_at <= now),
                    Grant.state.in_((REVOKING, IRREVOCABLE)) & (Grant.next_attempt_at <= now),
                )).order_by(Grant.expires_at)
            ).scalars())

    def overdue(self, now: datetime | None = None) -> list[Grant]:
        """Grants still on a principal after their expiry (for alerts and `grants list`)."""
        now = now or self.clock.now()
        with self.sessions() as session:
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
        return self._revoke_claimed(self._claim_due(now or self.clock.now(), limit, states),
                                    executor)

    def _revoke_claimed(self, claimed: list[_ClaimedRevoke], executor: Executor | None = None
                        ) -> list[RevocationOutcome]:
        """The IAM revoke of each claimed grant (on `executor` when given), outside any
        transaction, then one transaction that records every result."""
        if not claimed:
            return []

        def attempt(claim: _ClaimedRevoke) -> GrantError | None:
            try:
                self.granter.revoke(claim.principal_arn, claim.kind, claim.policy_names)
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
        with self._transaction() as session:
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
                    grant.next_attempt_at = now + self.claim_lease
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
        with self._transaction() as session:
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
            self._notify(event_name, request, **detail)
        return outcomes

    def _settle_revoke(self, request: AccessRequest, grant: Grant, error: GrantError | None
                       ) -> tuple[NewEvent, _PendingNotice | None]:
        """Record the result of one IAM revoke on a locked request and its grant: revoked,
        back for a retry with backoff, or irrevocable. Returns the audit event to append
        and the notification to send after commit."""
        now = self.clock.now()
        if error is None:
            after_irrevocable = grant.state == IRREVOCABLE
            grant.state, grant.revoked_at, grant.next_attempt_at = REVOKED, now, None
            event = self._moved(request, REVOKED, actor=SYSTEM, action="revoked", details={
                "grant_id": grant.id, "reason": grant.revoke_reason,
                "attempts": grant.revoke_attempts + 1,
                "lag_seconds": grant.revocation_lag_seconds})
            return event, ("revoked", {"grant_id": grant.id, "reason": grant.revoke_reason,
                                       "revoked_by": grant.revoked_by,
                                       "policy_names": list(grant.policy_names),
                                       "after_irrevocable": after_irrevocable})
        if error.throttled:
            # IAM refused our pace, not this revoke: no attempt is counted (throttling alone
            # never makes a grant irrevocable) and it is tried again soon, in expiry order
            # with the other due grants.
            grant.last_error = f"{error.code}: {error}" if error.code else str(error)
            grant.next_attempt_at = now + self.throttle_retry
            return self._event(request, SYSTEM, "revoke_failed", {
                "grant_id": grant.id, "error": grant.last_error, "throttled": True,
                "attempts": grant.revoke_attempts,
                "next_attempt_at": grant.next_attempt_at.isoformat()}), None
        grant.revoke_attempts += 1
        grant.last_error = f"{error.code}: {error}" if error.code else str(error)
        exhausted = not error.transient or grant.revoke_attempts >= self.max_revoke_attempts
        if grant.state == REVOKING and exhausted:
            grant.state = IRREVOCABLE
            grant.next_attempt_at = now + self.config.timings.irrevocable_retry
            event = self._moved(request, IRREVOCABLE, actor=SYSTEM, action="irrevocable",
                                details={"grant_id": grant.id, "error": grant.last_error,
                                         "attempts": grant.revoke_attempts})
            return event, ("irrevocable", {"grant_id": grant.id, "error": grant.last_error,
                                           "policy_names": grant.policy_names,
                                           "attempts": grant.revoke_attempts})
        if grant.state == IRREVOCABLE:
            delay = self.config.timings.irrevocable_retry
        else:
            delay = min(self.revoke_backoff * 2 ** (grant.revoke_attempts - 1),
                        self.revoke_backoff_cap)
        grant.next_attempt_at = now + delay
        return self._event(request, SYSTEM, "revoke_failed", {
            "grant_id": grant.id, "error": grant.last_error,
            "attempts": grant.revoke_attempts,
            "next_attempt_at": grant.next_attempt_at.isoformat()}), None


UNEXPECTED_ERROR = "UnexpectedError"
# An inline usage no principal's quota holds: rebuilding a managed plan with it makes the
# compiler choose managed policies again (inline plans rebuild with 0).
_NO_INLINE_ROOM = 10**9


def rebuild_context(grant: Grant, request: AccessRequest) -> GrantContext:
    """The context that rebuilds a recorded grant's plan as it was attached (same names,
    window and kind); the compiler is deterministic, so the documents come out the same
    unless the catalog entry or the compiler changed since."""
    return GrantContext(
        grant_id=grant.id, entry_id=request.entry_id, principal_arn=grant.principal_arn,
        instance_arn=request.instance_arn, start=grant.starts_at,
        expires_at=grant.expires_at,
        inline_usage=0 if grant.kind == "inline" else _NO_INLINE_ROOM,
        existing_policy_names=tuple(grant.policy_names))


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


class _QueuedNotice:
    """The one `grant_queued` notification a grant may send, now or from a timer; never
    after stop() (the grant is settled, and its outcome is what the requester hears)."""

    def __init__(self, service: RequestService, request: AccessRequest) -> None:
        self.service = service
        self.request = request
        self._lock = threading.Lock()
        self._closed = False
        self._timer: threading.Timer | None = None

    def tell(self, waited: float | None, expected: float) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.service._notify(
            "grant_queued", self.request,
            waited_seconds=None if waited is None else round(waited, 1),
            expected_wait_seconds=round(expected, 1))

    def tell_later(self, after: float, still_ahead: Callable[[], float]) -> None:
        def fire() -> None:
            try:
                ahead = still_ahead()
                if ahead > 0:
                    self.tell(after, ahead)
            except Exception:
                log.exception("could not tell request %s it is queued", self.request.id)

        timer = threading.Timer(after, fire)
        timer.daemon = True
        with self._lock:
            self._timer = timer
        timer.start()

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()


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


def _attached_documents(plan: GrantPlan, attached: Sequence[AttachedPolicy]
                        ) -> list[AttachedDocument]:
    """The plan's documents as the granter attached them (it read each one back and
    checked its hash), for the evidence table."""
    arns = {a.name: a.arn for a in attached}
    return [AttachedDocument(name=p.name, kind=plan.kind, arn=arns.get(p.name),
                             document=p.document) for p in plan.policies]


