"""Intake and votes: a request is submitted, voted on, approved (then granted), denied or
cancelled. Who may vote or cancel is decided by bot.decisions; the reason rule is
bot.request_rules.
"""

from __future__ import annotations

import logging
import zlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.config import ConfigError, Route
from bot.decisions import (
    is_approved,
    may_cancel,
    may_vote,
)
from bot.lifecycle.errors import (
    AlreadyActive,
    DuplicateVote,
    InvalidRequest,
    NotAllowed,
)
from bot.lifecycle.granting import Granting
from bot.lifecycle.timers import Timers
from bot.lifecycle.transitions import (
    AUTO_APPROVER,
    Transitions,
    facts_of,
    fmt_duration,
    require,
)
from bot.models import AccessRequest, Vote
from bot.ports import NotificationEvent, PrincipalError
from bot.request_rules import reason_problem
from bot.states import (
    ACTIVE,
    APPROVED,
    CANCELLED,
    DENIED,
    OPEN_STATES,
    PENDING,
    AuditAction,
)
from bot.targets import (
    ApproverMapping,
    IamTarget,
    IdentityCenterTarget,
    TargetError,
    account_of_target,
    parse_target,
    self_approval_decision,
)

log = logging.getLogger(__name__)


class Intake:
    """submit, approve, deny, cancel, and where the approval message was posted."""

    def __init__(self, core: Transitions, granting: Granting, timers: Timers) -> None:
        self.core = core
        self.granting = granting
        self.timers = timers

    def submit(self, *, requester: str, entry_id: str, reason: str, duration: timedelta,
               instance: str | None = None) -> AccessRequest:
        entry = self.core.entry(entry_id)
        route = self.core.config.router.route_for(entry)
        reason = reason.strip()
        if problem := reason_problem(reason):
            raise InvalidRequest(problem)
        seconds = int(duration.total_seconds())
        if duration < self.core.min_duration:
            shortest = fmt_duration(self.core.min_duration.total_seconds())
            raise InvalidRequest(f"The duration must be at least {shortest}.")
        if duration > route.max_duration:
            raise InvalidRequest(
                f"{entry.name} can be granted for at most "
                f"{fmt_duration(route.max_duration.total_seconds())}; you asked for "
                f"{fmt_duration(seconds)}."
            )
        instance_arn = instance_alias = None
        if self.core.config.instances or instance is not None:
            try:
                chosen = self.core.config.instance(instance)
            except ConfigError as exc:
                raise InvalidRequest(exc.fault) from None
            instance_arn, instance_alias = chosen.arn, chosen.alias
        try:
            principal_arn = self.core.principals.principal_for(requester)
        except PrincipalError as exc:
            raise NotAllowed(str(exc)) from None
        target_detail = self._target_detail(principal_arn, instance_arn)

        now = self.core.clock.now()
        with self.core.transaction() as session:
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
            self.core.audit(session, request, requester, AuditAction.SUBMITTED, {
                "entry_id": entry.id, "entry_hash": request.entry_hash, "tier": route.tier,
                "principal_arn": principal_arn, "instance_arn": instance_arn,
                "reason": reason, "duration_seconds": seconds,
                "required_approvals": route.approvals, **target_detail})
        self.core.notify(NotificationEvent.SUBMITTED, request,
                         reason=reason, duration_seconds=seconds,
                         channel=route.channel, approvers=list(route.approvers),
                         required_approvals=route.approvals, auto_approve=route.auto_approve,
                         **target_detail)
        if route.auto_approve:
            with self.core.transaction() as session:
                request = self.core.locked(session, request.id)
                self.core.move(session, request, APPROVED, actor=AUTO_APPROVER,
                               action=AuditAction.APPROVED,
                               details={"auto_approve": True})
            self.core.notify(NotificationEvent.APPROVED, request, auto_approve=True)
            return self.granting.grant(request.id)
        return request

    def _target_detail(self, ref: str, instance_arn: str | None) -> dict[str, Any]:
        """Check the target may receive a grant here, and what approvers should see about
        it: its kind, and for a group how many IAM users it reaches."""
        try:
            target = parse_target(ref)
            account_of_target(target, instance_arn)
        except TargetError as exc:
            raise NotAllowed(str(exc)) from None
        if isinstance(target, IdentityCenterTarget) and self.core.config.identity_center is None:
            raise NotAllowed(
                f"{target.describe()} needs the bot's `identity_center:` config; ask an "
                "administrator to add it.")
        detail: dict[str, Any] = {"target_kind": target.kind}
        if isinstance(target, IamTarget) and target.is_group:
            if not self.core.config.allow_group_targets:
                raise NotAllowed(
                    f"{ref} is an IAM group, and a grant to it would reach every member; "
                    "this bot does not grant to groups (allow_group_targets is off). Ask an "
                    "administrator to map your own role or user.")
            try:
                detail["group_members"] = self.core.principals.group_member_count(ref)
            except PrincipalError as exc:
                raise NotAllowed(str(exc)) from None
        detail["access"] = self.core.access(ref, instance_arn,
                                            group_members=detail.get("group_members"))
        return detail

    def approve(self, request_id: int, approver: str, comment: str | None = None
                ) -> AccessRequest:
        """Record an approval. The vote that reaches the tier's count approves the request
        (or the pending extension) and this call goes on to grant it."""
        extended_to: datetime | None = None
        mapping = self.core.principals.approver_mapping(approver)
        with self.core.transaction() as session:
            request = self.core.locked(session, request_id)
            extending = request.state == ACTIVE and request.extension_seconds is not None
            route = self._check_voter(session, request, approver, mapping)
            approvals = self._vote(session, request, approver, "approve", comment)
            approved = is_approved(approvals, request.required_approvals).allowed
            if approved and extending:
                extended_to = self.timers.apply_extension(session, request, approver)
            elif approved:
                self.core.move(session, request, APPROVED, actor=approver,
                               action=AuditAction.APPROVED,
                               details={"approvals": approvals})
        self.core.notify(NotificationEvent.VOTE, request,
                         approver=approver, decision="approve", comment=comment,
                         approvals=approvals, required_approvals=request.required_approvals,
                         extension=extending, channel=route.channel)
        if extended_to is not None:
            self.core.notify(NotificationEvent.EXTENDED, request, approver=approver,
                             expires_at=extended_to.isoformat())
            return request
        if approved:
            self.core.notify(NotificationEvent.APPROVED, request, approver=approver)
            return self.granting.grant(request.id)
        return request

    def deny(self, request_id: int, approver: str, comment: str | None = None
             ) -> AccessRequest:
        """Any one deny ends the request (or its pending extension)."""
        mapping = self.core.principals.approver_mapping(approver)
        with self.core.transaction() as session:
            request = self.core.locked(session, request_id)
            extending = request.state == ACTIVE and request.extension_seconds is not None
            self._check_voter(session, request, approver, mapping)
            self._vote(session, request, approver, "deny", comment)
            if extending:
                request.extension_seconds = None
                request.extension_requested_at = None
                request.updated_at = self.core.clock.now()
                self.core.audit(session, request, approver, AuditAction.EXTENSION_DENIED,
                                {"comment": comment})
            else:
                self.core.move(session, request, DENIED, actor=approver, action=AuditAction.DENIED,
                               details={"comment": comment})
        self.core.notify(NotificationEvent.DENIED, request,
                         approver=approver, comment=comment, extension=extending)
        return request

    def _check_voter(self, session: Session, request: AccessRequest, approver: str,
                     mapping: ApproverMapping) -> Route:
        """Raise unless `approver` may vote on the locked `request` now (bot.decisions).
        `mapping`: the approver's own, from the principal directory (looked up before the
        request's row is locked, since it may call AWS)."""
        facts = facts_of(request)
        if not facts.open_for_votes:  # refused as such (raises) before any look-up
            require(may_vote(facts, approver, approvers=(), is_approver=False,
                             has_voted=False))
        route = self.core.route(request)
        has_voted = session.execute(
            select(Vote.id).where(Vote.request_id == request.id,
                                  Vote.approval_round == request.approval_round,
                                  Vote.approver == approver)
        ).first() is not None
        require(may_vote(
            facts, approver, approvers=route.approvers,
            is_approver=approver in self.core.approvers.members(route.approvers),
            has_voted=has_voted,
            principal_check=self_approval_decision(request.requester, approver,
                                                   request.principal_arn, mapping)))
        return route

    def _vote(self, session: Session, request: AccessRequest, approver: str, decision: str,
              comment: str | None) -> int:
        """Add one vote in the current round; return the round's approval count."""
        try:
            with session.begin_nested():
                session.add(Vote(request_id=request.id, approval_round=request.approval_round,
                                 approver=approver, decision=decision, comment=comment,
                                 at=self.core.clock.now()))
        except IntegrityError:
            # Two clicks that both passed _check_voter: the unique index decides.
            raise DuplicateVote(f"You have already voted on request #{request.id}; each "
                                "approver votes once.") from None
        request.updated_at = self.core.clock.now()
        self.core.audit(session, request, approver, AuditAction.VOTE,
                        {"decision": decision, "comment": comment, "round": request.approval_round})
        count = session.execute(
            select(func.count()).select_from(Vote).where(
                Vote.request_id == request.id, Vote.approval_round == request.approval_round,
                Vote.decision == "approve")
        ).scalar_one()
        return int(count)

    def cancel(self, request_id: int, actor: str) -> AccessRequest:
        with self.core.transaction() as session:
            request = self.core.locked(session, request_id)
            require(may_cancel(facts_of(request), actor))
            self.core.move(session, request, CANCELLED, actor=actor, action=AuditAction.CANCELLED)
        self.core.notify(NotificationEvent.CANCELLED, request)
        return request

    def set_approval_message(self, request_id: int, channel: str, ts: str) -> None:
        """Remember where the approval message was posted (Slack calls this)."""
        with self.core.transaction() as session:
            request = self.core.locked(session, request_id)
            request.approval_channel, request.approval_ts = channel, ts

    @staticmethod
    def _serialise_on(session: Session, key: str) -> None:
        """PostgreSQL: a transaction-scoped advisory lock so two submissions for the same
        entry and principal cannot both pass the 'already open' check."""
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                            {"key": zlib.crc32(key.encode())})
