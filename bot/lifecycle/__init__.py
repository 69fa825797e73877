"""The request state machine. Pure core: it reaches IAM, Slack and the clock only through
the ports in bot.ports, and the database through a session factory.

    pending --(enough approvals)--> approved --> granting --> active --> revoking --> revoked
    pending --> denied | cancelled | timed_out      approved|granting --> failed
    revoking --> irrevocable --> revoked            active --(extension approved)--> active

Split by job over one shared transition core (transitions.Transitions: transaction, row
lock, the one state change `moved`, audit, notify, alert):

- intake: submit, approve, deny, cancel;
- granting: grant, recovery of requests left approved or granting, stuck grants;
- revocation: revoke and revoke_due_batch (one claim/attempt/settle path), reconcile's end;
- timers: pending time-outs, reminders, expiring-soon notices, extensions.

RequestService composes them behind the interface the rest of the code calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Generic, TypeVar, cast

from bot.alerts import Alerter
from bot.catalog import Catalog
from bot.config import OperatorConfig
from bot.db import SessionFactory
from bot.decisions import SYSTEM, RevokeReason
from bot.lifecycle.errors import (
    AlreadyActive,
    ConcurrentChange,
    DuplicateVote,
    GrantFailed,
    InvalidRequest,
    InvalidTransition,
    LifecycleError,
    NotAllowed,
    NotFound,
    SelfApproval,
)
from bot.lifecycle.granting import Granting, new_grant_id, rebuild_context
from bot.lifecycle.intake import Intake
from bot.lifecycle.revocation import (
    UNEXPECTED_ERROR,
    Revocation,
    RevocationOutcome,
    revoke_error,
)
from bot.lifecycle.timers import Timers
from bot.lifecycle.transitions import (
    AUTO_APPROVER,
    RECONCILE_ACTOR,
    GrantContext,
    PlanBuilder,
    Transitions,
)
from bot.ports import (
    ApproverDirectory,
    Clock,
    Granter,
    Notifier,
    Pacing,
    PrincipalDirectory,
)

__all__ = [
    "AUTO_APPROVER", "RECONCILE_ACTOR", "SYSTEM", "UNEXPECTED_ERROR", "AlreadyActive",
    "ConcurrentChange", "DuplicateVote", "GrantContext", "GrantFailed", "InvalidRequest",
    "InvalidTransition", "LifecycleError", "NotAllowed", "NotFound", "PlanBuilder",
    "RequestService", "RevocationOutcome", "RevokeReason", "SelfApproval", "new_grant_id",
    "rebuild_context", "revoke_error",
]

_V = TypeVar("_V")


class _Shared(Generic[_V]):
    """A RequestService attribute kept on its Transitions, so replacing it (a test swaps
    the granter, an operator reloads the config) changes it for every job."""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    def __get__(self, service: RequestService, owner: type[Any] | None = None) -> _V:
        return cast(_V, getattr(service.core, self.name))

    def __set__(self, service: RequestService, value: _V) -> None:
        setattr(service.core, self.name, value)


class RequestService:
    """The lifecycle as one object: builds the shared core and the four jobs, and offers
    each job's public operations under the names callers have always used."""

    sessions: _Shared[SessionFactory] = _Shared()
    catalog: _Shared[Catalog] = _Shared()
    config: _Shared[OperatorConfig] = _Shared()
    granter: _Shared[Granter] = _Shared()
    notifier: _Shared[Notifier] = _Shared()
    approvers: _Shared[ApproverDirectory] = _Shared()
    principals: _Shared[PrincipalDirectory] = _Shared()
    clock: _Shared[Clock] = _Shared()
    plan_builder: _Shared[PlanBuilder] = _Shared()
    alerter: _Shared[Alerter] = _Shared()
    pacing: _Shared[Pacing | None] = _Shared()
    max_revoke_attempts: _Shared[int] = _Shared()
    revoke_backoff: _Shared[timedelta] = _Shared()
    revoke_backoff_cap: _Shared[timedelta] = _Shared()
    claim_lease: _Shared[timedelta] = _Shared()
    min_duration: _Shared[timedelta] = _Shared()
    throttle_retry: _Shared[timedelta] = _Shared()
    queued_notice_after: _Shared[timedelta] = _Shared()
    grant_throttle_retries: _Shared[int] = _Shared()

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
        min_duration: timedelta = timedelta(minutes=1),
        throttle_retry: timedelta = timedelta(seconds=5),
        pacing: Pacing | None = None,
        queued_notice_after: timedelta = timedelta(seconds=2),
        grant_throttle_retries: int = 12,
        sleep: Callable[[float], None] = time.sleep,
        alerter: Alerter | None = None,
    ) -> None:
        """The arguments are Transitions' (documented there)."""
        self.core = Transitions(
            sessions=sessions, catalog=catalog, config=config, granter=granter,
            notifier=notifier, approvers=approvers, principals=principals, clock=clock,
            plan_builder=plan_builder, max_revoke_attempts=max_revoke_attempts,
            revoke_backoff=revoke_backoff, revoke_backoff_cap=revoke_backoff_cap,
            claim_lease=claim_lease, min_duration=min_duration,
            throttle_retry=throttle_retry, pacing=pacing,
            queued_notice_after=queued_notice_after,
            grant_throttle_retries=grant_throttle_retries, sleep=sleep, alerter=alerter)
        self.granting = Granting(self.core)
        self.timers = Timers(self.core)
        self.revocation = Revocation(self.core)
        self.intake = Intake(self.core, self.granting, self.timers)

        self.get = self.core.get
        # intake and votes
        self.submit = self.intake.submit
        self.approve = self.intake.approve
        self.deny = self.intake.deny
        self.cancel = self.intake.cancel
        self.set_approval_message = self.intake.set_approval_message
        # granting, and settling what a stopped process left half done
        self.grant = self.granting.grant
        self.unsettled = self.granting.unsettled
        self.recover_stuck = self.granting.recover_stuck
        self.stuck_grants = self.granting.stuck_grants
        self.finish_stuck_grant = self.granting.finish_stuck_grant
        # revocation
        self.revoke = self.revocation.revoke
        self.due_for_revocation = self.revocation.due_for_revocation
        self.overdue = self.revocation.overdue
        self.revoke_due_batch = self.revocation.revoke_due_batch
        self.end_active_by_reconcile = self.revocation.end_active_by_reconcile
        # timers and extensions
        self.expire_pending = self.timers.expire_pending
        self.pending_reminders = self.timers.pending_reminders
        self.expiring_soon = self.timers.expiring_soon
        self.request_extension = self.timers.request_extension
