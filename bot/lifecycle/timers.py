"""What happens with time: pending requests time out, approvers are reminded, holders
are told their access ends soon, and active access is extended (re-approved per tier).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.audit import append_events
from bot.decisions import (
    SYSTEM,
    may_extend,
)
from bot.evidence import (
    combined_hash,
    evidence_summary,
    record_policy_evidence,
)
from bot.lifecycle.errors import (
    GrantFailed,
    InvalidRequest,
    InvalidTransition,
)
from bot.lifecycle.transitions import (
    AUTO_APPROVER,
    GrantContext,
    Transitions,
    attached_documents,
    facts_of,
    fmt_duration,
    require,
)
from bot.models import AccessRequest, Grant
from bot.ports import GrantError, NotificationEvent
from bot.states import (
    ACTIVE,
    PENDING,
    TIMED_OUT,
    AuditAction,
)

log = logging.getLogger(__name__)


class Timers:
    """expire_pending, pending_reminders, expiring_soon, request_extension."""

    def __init__(self, core: Transitions) -> None:
        self.core = core

    def expire_pending(self, now: datetime | None = None) -> list[int]:
        """Time out pending requests older than timings.pending_ttl; return their ids."""
        now = now or self.core.clock.now()
        cutoff = now - self.core.config.timings.pending_ttl
        with self.core.sessions() as session:
            ids = list(session.execute(
                select(AccessRequest.id).where(AccessRequest.state == PENDING,
                                               AccessRequest.created_at <= cutoff)
                .order_by(AccessRequest.id)
            ).scalars())
        timed_out: list[int] = []
        for request_id in ids:
            with self.core.transaction() as session:
                request = self.core.lock(session, request_id, skip_locked=True)
                if request is None or request.state != PENDING or request.created_at > cutoff:
                    continue  # decided meanwhile, or another worker has it
                self.core.move(session, request, TIMED_OUT, actor=SYSTEM,
                               action=AuditAction.TIMED_OUT,
                               details={"pending_ttl_seconds":
                                        int(self.core.config.timings.pending_ttl.total_seconds())})
            timed_out.append(request_id)
            self.core.notify(NotificationEvent.TIMED_OUT, request)
        return timed_out

    def pending_reminders(self, now: datetime | None = None) -> list[int]:
        """Nudge approvers once about requests pending longer than pending_reminder_after."""
        now = now or self.core.clock.now()
        cutoff = now - self.core.config.timings.pending_reminder_after
        reminded: list[AccessRequest] = []
        with self.core.transaction() as session:
            for request in session.execute(
                select(AccessRequest).where(AccessRequest.state == PENDING,
                                            AccessRequest.reminded_at.is_(None),
                                            AccessRequest.created_at <= cutoff)
                .with_for_update(skip_locked=True)
            ).scalars():
                request.reminded_at = now
                reminded.append(request)
        for request in reminded:
            self.core.notify(NotificationEvent.PENDING_REMINDER, request)
        return [r.id for r in reminded]

    def expiring_soon(self, now: datetime | None = None) -> list[str]:
        """Tell requesters once that their access ends within remind_before_expiry."""
        now = now or self.core.clock.now()
        horizon = now + self.core.config.timings.remind_before_expiry
        told: list[tuple[AccessRequest, Grant]] = []
        with self.core.transaction() as session:
            for grant in session.execute(
                select(Grant).where(Grant.state == ACTIVE, Grant.expires_at <= horizon,
                                    Grant.expires_at > now, Grant.expiry_reminded_at.is_(None))
                .with_for_update(skip_locked=True)
            ).scalars():
                grant.expiry_reminded_at = now
                told.append((grant.request, grant))
        for request, grant in told:
            self.core.notify(NotificationEvent.EXPIRING_SOON, request, grant_id=grant.id,
                             expires_at=grant.expires_at.isoformat())
        return [g.id for _, g in told]

    def request_extension(self, request_id: int, actor: str, extra: timedelta
                          ) -> AccessRequest:
        """Ask for more time on active access; it goes through the tier's approvals again."""
        extended_to: datetime | None = None
        with self.core.transaction() as session:
            request = self.core.locked(session, request_id)
            require(may_extend(facts_of(request), actor))
            route = self.core.route(request)
            seconds = int(extra.total_seconds())
            if seconds < 60 or extra > route.max_duration:
                raise InvalidRequest(
                    f"An extension must be between 1 minute and "
                    f"{fmt_duration(route.max_duration.total_seconds())}.")
            total = request.duration_seconds + seconds
            limit = route.total_limit.total_seconds()
            if total > limit:
                raise InvalidRequest(
                    f"Request #{request.id} has had {fmt_duration(request.duration_seconds)} "
                    f"so far; {fmt_duration(seconds)} more would make "
                    f"{fmt_duration(total)}, over the {fmt_duration(limit)} a "
                    f"{request.tier}-tier request may last in total. Request the access again "
                    "instead, so it is approved afresh.")
            # A human approves anything past the tier's own maximum, even on an
            # auto-approved tier: otherwise access could be stretched with nobody looking.
            auto = route.auto_approve and total <= route.max_duration.total_seconds()
            if not auto and not route.approvers:
                raise InvalidRequest(
                    f"Extending request #{request.id} to {fmt_duration(total)} needs an "
                    f"approver, and none is configured for {request.tier}-tier requests. "
                    "Request the access again instead.")
            request.extension_seconds = seconds
            request.extension_requested_at = self.core.clock.now()
            request.approval_round += 1
            request.required_approvals = route.approvals
            request.updated_at = self.core.clock.now()
            self.core.audit(session, request, actor, AuditAction.EXTENSION_REQUESTED,
                            {"extension_seconds": seconds, "round": request.approval_round})
            if auto:
                extended_to = self.apply_extension(session, request, AUTO_APPROVER)
        self.core.notify(NotificationEvent.EXTENSION_REQUESTED, request, extension_seconds=seconds,
                         channel=route.channel, approvers=list(route.approvers),
                         required_approvals=route.approvals,
                         auto_approve=extended_to is not None)
        if extended_to is not None:
            self.core.notify(NotificationEvent.EXTENDED, request, approver=AUTO_APPROVER,
                             expires_at=extended_to.isoformat())
        return request

    def apply_extension(self, session: Session, request: AccessRequest, actor: str
                        ) -> datetime:
        """Re-attach the policy with the later expiry (its aws:CurrentTime bound moves too),
        then record it. Runs under the request lock; if IAM refuses, the whole
        transaction (including the deciding vote) rolls back and the approver is told."""
        grant = self.core.active_grant(request, session)
        extension = request.extension_seconds
        if grant is None or grant.state != ACTIVE or extension is None:
            raise InvalidTransition(f"Request #{request.id} has no active grant to extend.")
        now = self.core.clock.now()
        new_expiry = max(grant.expires_at, now) + timedelta(seconds=extension)
        names = tuple(grant.policy_names)
        try:
            context = GrantContext(
                grant_id=grant.id, entry_id=request.entry_id,
                principal_arn=request.principal_arn, instance_arn=request.instance_arn,
                start=grant.starts_at, expires_at=new_expiry,
                inline_usage=self.core.granter.inline_usage(request.principal_arn, exclude=names),
                existing_policy_names=names,
            )
            plan = self.core.plan_builder(context)
            attached = self.core.granter.attach(plan)
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
        documents = attached_documents(plan, attached)
        [event] = append_events(session, [self.core.event(request, actor, AuditAction.EXTENDED, {
            "grant_id": grant.id, "old_expires_at": old_expiry.isoformat(),
            "expires_at": new_expiry.isoformat(), "extension_seconds": extension,
            "policies": evidence_summary(documents)})])
        record_policy_evidence(session, grant_id=grant.id, request_id=request.id,
                               audit_seq=event.seq, attached_at=now, documents=documents)
        return new_expiry
