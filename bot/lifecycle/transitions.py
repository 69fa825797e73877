"""The lifecycle's shared transition core: what every job (intake, granting, revocation,
timers) works through. A request's state changes in exactly one place, Transitions.moved,
checked against bot.states.TRANSITIONS, stamped and audited in the transaction that locks
the request row (SELECT ... FOR UPDATE on PostgreSQL; SQLite writers are serialised by
BEGIN IMMEDIATE, see bot.db). Notifications and alerts go out from here after commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from bot.alerts import Alert, Alerter, AlertRef, LoggingAlerter
from bot.audit import NewEvent, append_events
from bot.catalog import Catalog, CatalogEntry
from bot.config import OperatorConfig, Route
from bot.db import SessionFactory
from bot.decisions import (
    Decision,
    Refusal,
    RequestFacts,
)
from bot.durations import format_duration
from bot.evidence import (
    AttachedDocument,
)
from bot.lifecycle.errors import (
    ConcurrentChange,
    DuplicateVote,
    InvalidRequest,
    InvalidTransition,
    LifecycleError,
    NotAllowed,
    NotFound,
    SelfApproval,
)
from bot.models import AccessRequest, Grant, load_request
from bot.ports import (
    ApproverDirectory,
    AttachedPolicy,
    Clock,
    Granter,
    GrantPlan,
    Notification,
    NotificationEvent,
    Notifier,
    Pacing,
    PrincipalDirectory,
)
from bot.states import (
    ACTIVE,
    APPROVED,
    CANCELLED,
    DENIED,
    FAILED,
    GRANTING,
    IRREVOCABLE,
    REVOKED,
    REVOKING,
    TIMED_OUT,
    TRANSITIONS,
    AuditAction,
    RequestState,
)
from bot.targets import (
    access_route,
)

log = logging.getLogger(__name__)


AUTO_APPROVER = "system:auto-approve"
RECONCILE_ACTOR = "system:reconcile"


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


_REFUSAL_ERRORS: Mapping[Refusal, type[LifecycleError]] = {
    Refusal.WRONG_STATE: InvalidTransition,
    Refusal.SELF_APPROVAL: SelfApproval,
    Refusal.ALREADY_VOTED: DuplicateVote,
    Refusal.NO_APPROVERS: NotAllowed,
    Refusal.NOT_APPROVER: NotAllowed,
    Refusal.NOT_REQUESTER: NotAllowed,
    Refusal.NOT_SYSTEM: NotAllowed,
}


def require(decision: Decision) -> None:
    """Raise the lifecycle error that matches a refused decision."""
    if not decision.allowed:
        error = _REFUSAL_ERRORS[decision.refusal] if decision.refusal else LifecycleError
        raise error(decision.reason)


def facts_of(request: AccessRequest) -> RequestFacts:
    return RequestFacts(request.id, request.requester, request.state, request.tier,
                        extension_pending=request.extension_seconds is not None)


def fmt_duration(seconds: float) -> str:
    return format_duration(timedelta(seconds=int(seconds)))


def attached_documents(plan: GrantPlan, attached: Sequence[AttachedPolicy]
                       ) -> list[AttachedDocument]:
    """The plan's documents as the granter attached them (it read each one back and
    checked its hash), for the evidence table."""
    arns = {a.name: a.arn for a in attached}
    return [AttachedDocument(name=p.name, kind=plan.kind, arn=arns.get(p.name),
                             document=p.document) for p in plan.policies]


class Transitions:
    """The ports, settings and transition primitives the job classes share. Changing
    a dependency here (the granter, the config) changes it for every job."""

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

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction; lost races and constraint hits become domain errors."""
        try:
            with self.sessions.begin() as session:
                yield session
        except StaleDataError:
            raise ConcurrentChange(
                "Someone else changed this request at the same moment; please try again."
            ) from None

    def entry(self, entry_id: str) -> CatalogEntry:
        try:
            return self.catalog.get(entry_id)
        except KeyError:
            raise InvalidRequest(
                f"There is no catalog entry {entry_id!r}; try `/connect-access` with a "
                "description of what you need."
            ) from None

    def route(self, request: AccessRequest) -> Route:
        return self.config.router.route_for(self.entry(request.entry_id))

    @staticmethod
    def lock(session: Session, request_id: int, *, skip_locked: bool = False
             ) -> AccessRequest | None:
        query = select(AccessRequest).where(AccessRequest.id == request_id)
        query = query.with_for_update(skip_locked=skip_locked)
        return session.execute(
            query.execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def locked(self, session: Session, request_id: int) -> AccessRequest:
        request = self.lock(session, request_id)
        if request is None:
            raise NotFound(f"There is no request #{request_id}.")
        return request

    def move(self, session: Session, request: AccessRequest, to_state: RequestState, *,
             actor: str, action: AuditAction,
             details: Mapping[str, Any] | None = None) -> None:
        """Change state (checked against TRANSITIONS), stamp it and audit it."""
        append_events(session, [self.moved(request, to_state, actor=actor, action=action,
                                           details=details)])

    def moved(self, request: AccessRequest, to_state: RequestState, *, actor: str,
              action: AuditAction,
              details: Mapping[str, Any] | None = None) -> NewEvent:
        """move without the append: the caller appends the returned event (batches append
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
        return self.event(request, actor, action, {"to": to_state, **(details or {})})

    def audit(self, session: Session, request: AccessRequest | None, actor: str,
              action: AuditAction, details: Mapping[str, Any]) -> None:
        append_events(session, [self.event(request, actor, action, details)])

    def event(self, request: AccessRequest | None, actor: str, action: AuditAction,
              details: Mapping[str, Any]) -> NewEvent:
        return NewEvent(at=self.clock.now(), actor=actor, action=action,
                        request_id=None if request is None else request.id, details=details)

    def notify(self, event: NotificationEvent, request: AccessRequest, **detail: Any) -> None:
        base = {"requester": request.requester, "entry_id": request.entry_id,
                "tier": request.tier, "state": request.state,
                "principal_arn": request.principal_arn,
                "approval_channel": request.approval_channel, "approval_ts": request.approval_ts}
        self.notifier.notify(Notification(event=event, request_id=request.id,
                                          detail={**base, **detail}))
        if event == NotificationEvent.IRREVOCABLE:
            self.send_alert(request, Alert(
                kind="irrevocable",
                summary=(f"Access #{request.id} ({request.entry_id}) could not be removed "
                         f"from its principal after {detail.get('attempts')} attempt(s): "
                         f"{detail.get('error')}"),
                next_step=(
                    "Fix what the error names (the bot's IAM permissions, a deleted "
                    "principal) or delete the listed policies from the principal by hand. "
                    "The bot retries every "
                    f"{fmt_duration(self.config.timings.irrevocable_retry.total_seconds())}"
                    " and follows up in this thread once they are gone; until then the "
                    "policy's own aws:CurrentTime condition still ends the access."),
                request_id=request.id, requester=request.requester,
                principal_arn=request.principal_arn,
                policy_names=tuple(detail.get("policy_names") or ()),
            ))
        elif (event == NotificationEvent.REVOKED and detail.get("after_irrevocable")
              and request.alert_ts and request.alert_channel):
            self.send_alert(request, Alert(
                kind="irrevocable_resolved",
                summary=f"Access #{request.id} ({request.entry_id}) has now been removed; "
                        "nothing of it is left on the principal.",
                next_step="Nothing more; the request is closed.",
                request_id=request.id, requester=request.requester,
                principal_arn=request.principal_arn,
                policy_names=tuple(detail.get("policy_names") or ()),
                follows_up=AlertRef(request.alert_channel, request.alert_ts),
            ))

    def send_alert(self, request: AccessRequest, alert: Alert) -> None:
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

    @staticmethod
    def active_grant(request: AccessRequest, session: Session) -> Grant | None:
        return session.execute(
            select(Grant).where(Grant.request_id == request.id,
                                Grant.state.in_((ACTIVE, REVOKING, IRREVOCABLE, GRANTING)))
            .order_by(Grant.created_at.desc()).limit(1)
        ).scalar_one_or_none()

    def access(self, ref: str, instance_arn: str | None, policy_name: str | None = None,
               group_members: int | None = None) -> dict[str, Any]:
        """How the person reaches the access, for the approval message and the DM."""
        portal = self.config.identity_center.access_portal if self.config.identity_center \
            else None
        return access_route(ref, instance_arn, portal_url=portal, grant_name=policy_name,
                            group_members=group_members).as_dict()

    def get(self, request_id: int) -> AccessRequest:
        """The request with its votes and grants loaded (detached, read-only use)."""
        with self.sessions() as session:
            request = load_request(session, request_id)
            if request is None:
                raise NotFound(f"There is no request #{request_id}.")
            return request
