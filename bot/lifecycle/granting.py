"""Granting: approved -> granting -> active (or failed, nothing left attached), the
"your grant is queued" notice while IAM's rate limit holds it back, and the recovery of
requests a stopped process left approved or granting.

IAM calls happen outside the lock, after the intent is committed, so a crash in between
leaves a row that recovery (recover_stuck) or reconciliation (finish_stuck_grant) finishes.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import select

from bot.alerts import Alert
from bot.audit import append_events
from bot.decisions import (
    SYSTEM,
)
from bot.evidence import (
    combined_hash,
    evidence_summary,
    record_policy_evidence,
)
from bot.lifecycle.errors import (
    InvalidTransition,
    LifecycleError,
    NotFound,
)
from bot.lifecycle.transitions import (
    RECONCILE_ACTOR,
    GrantContext,
    Transitions,
    attached_documents,
    fmt_duration,
)
from bot.models import AccessRequest, Grant
from bot.ports import GrantError, GrantPlan, NotificationEvent, PolicyKind
from bot.states import (
    ACTIVE,
    APPROVED,
    FAILED,
    GRANTING,
    AuditAction,
    RequestState,
)
from bot.targets import (
    account_of_target,
    parse_target,
)

log = logging.getLogger(__name__)


_T = TypeVar("_T")

# An inline usage no principal's quota holds: rebuilding a managed plan with it makes the
# compiler choose managed policies again (inline plans rebuild with 0).
_NO_INLINE_ROOM = 10**9


def new_grant_id() -> str:
    """Short, unique and safe in IAM policy names and URLs."""
    return uuid.uuid4().hex[:12]


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


class Granting:
    """grant, recover_stuck/unsettled, stuck_grants/finish_stuck_grant."""

    def __init__(self, core: Transitions) -> None:
        self.core = core

    def grant(self, request_id: int) -> AccessRequest:
        """approved -> granting (committed with the planned policy names) -> IAM attach ->
        active, or failed with nothing left attached."""
        with self.core.sessions() as session:
            request = session.get(AccessRequest, request_id)
            if request is None:
                raise NotFound(f"There is no request #{request_id}.")
            if request.state != APPROVED:
                raise InvalidTransition(
                    f"Request #{request.id} is {request.state.replace('_', ' ')}, not approved; "
                    "it cannot be granted now.")
        start = self.core.clock.now()
        principal_arn = request.principal_arn
        queued = self._watch_queue(request, start)
        context = GrantContext(
            grant_id=new_grant_id(), entry_id=request.entry_id,
            principal_arn=request.principal_arn, instance_arn=request.instance_arn,
            start=start, expires_at=start + timedelta(seconds=request.duration_seconds),
            inline_usage=0,
        )
        try:
            usage = self._patiently(queued, lambda: self.core.granter.inline_usage(principal_arn))
            context = replace(context, inline_usage=usage)
            plan = self.core.plan_builder(context)
        except GrantError as exc:
            queued.stop()
            return self._fail_before_attach(request_id, f"could not read the principal: {exc}")
        except Exception as exc:
            queued.stop()
            # Whatever stops the plan being built (a policy over quota, a bad entry) must
            # end the request as failed, never leave it approved with nobody told.
            log.exception("building the grant plan for request %s failed", request_id)
            return self._fail_before_attach(request_id, str(exc) or type(exc).__name__)

        with self.core.transaction() as session:
            request = self.core.locked(session, request_id)
            if request.state != APPROVED:
                # Another process (the scheduler recovering it, or a second click) took it
                # between our check and this lock; its grant is the one that counts.
                log.info("request %s became %s while a grant was planned; leaving it to "
                         "whoever moved it", request_id, request.state)
                queued.stop()
                return request
            self.core.move(session, request, GRANTING, actor=SYSTEM,
                           action=AuditAction.GRANTING, details={
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
            attached = self._patiently(queued, lambda: self.core.granter.attach(plan))
        except GrantError as exc:
            queued.stop()
            if self._settled_elsewhere(plan.grant_id):
                return self.core.get(request_id)
            self._cleanup_partial(plan)
            with self.core.transaction() as session:
                request = self.core.locked(session, request_id)
                grant = session.get_one(Grant, plan.grant_id)
                grant.state, grant.last_error = FAILED, str(exc)
                self.core.move(session, request, FAILED, actor=SYSTEM,
                               action=AuditAction.GRANT_FAILED,
                               details={"grant_id": grant.id, "error": str(exc), "code": exc.code})
            self.core.notify(NotificationEvent.FAILED, request,
                             error=str(exc), grant_id=plan.grant_id)
            return request
        queued.stop()

        with self.core.transaction() as session:
            request = self.core.locked(session, request_id)
            grant = session.get_one(Grant, plan.grant_id, populate_existing=True)
            if grant.state != GRANTING:
                log.info("grant %s was settled (%s) by another process meanwhile",
                         grant.id, grant.state)
                return request
            grant.state, grant.attached_at = ACTIVE, self.core.clock.now()
            grant.document_hash = combined_hash([a.document_hash for a in attached])
            documents = attached_documents(plan, attached)
            [event] = append_events(session, [self.core.moved(
                request, ACTIVE, actor=SYSTEM, action=AuditAction.GRANTED, details={
                    "grant_id": grant.id, "policy_names": grant.policy_names,
                    "document_hash": grant.document_hash,
                    "expires_at": grant.expires_at.isoformat(),
                    "policies": evidence_summary(documents)})])
            record_policy_evidence(session, grant_id=grant.id, request_id=request.id,
                                   audit_seq=event.seq, attached_at=self.core.clock.now(),
                                   documents=documents)
        self.core.notify(NotificationEvent.GRANTED, request,
                         grant_id=grant.id, policy_names=grant.policy_names,
                         expires_at=grant.expires_at.isoformat(),
                         access=self.core.access(request.principal_arn, request.instance_arn,
                                                 grant.policy_names[0], request.group_members))
        return request

    def _watch_queue(self, request: AccessRequest, now: datetime) -> _QueuedNotice:
        """Tell the requester, once, when their grant waits behind IAM's rate limit (nothing
        is wrong; it will be granted): at once when it has waited since approval, or the
        IAM requests queued ahead of it will make it wait, for `queued_notice_after`; or
        when the grant is still not done that long from now while requests queue for the
        limit; or when IAM throttles it (see _patiently)."""
        notice = _QueuedNotice(self.core, request)
        if self.core.pacing is None:
            return notice
        pacing, principal_arn = self.core.pacing, request.principal_arn
        threshold = self.core.queued_notice_after.total_seconds()
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
        for retry in range(self.core.grant_throttle_retries + 1):
            try:
                return call()
            except GrantError as exc:
                if not exc.throttled or retry == self.core.grant_throttle_retries:
                    raise
                queued.tell(None, self.core.throttle_retry.total_seconds())
                log.warning("IAM throttled the grant for request %s; trying again in %s",
                            queued.request.id, self.core.throttle_retry)
                self.core.sleep(self.core.throttle_retry.total_seconds())
        raise AssertionError("unreachable")  # the loop returns or raises

    def _settled_elsewhere(self, grant_id: str) -> bool:
        """Whether a grant this process was attaching has been settled by another (the
        scheduler's recovery): then its outcome stands and this one's failure is moot."""
        with self.core.sessions() as session:
            state = session.execute(select(Grant.state).where(Grant.id == grant_id)).scalar()
        return state != GRANTING

    def _cleanup_partial(self, plan: GrantPlan) -> None:
        """After a failed attach, remove whatever part of the plan may have landed."""
        try:
            self.core.granter.revoke(plan.principal_arn, plan.kind, [p.name for p in plan.policies])
        except GrantError:
            log.warning("could not clean up after failed attach of grant %s", plan.grant_id)

    def _fail_before_attach(self, request_id: int, error: str) -> AccessRequest:
        with self.core.transaction() as session:
            request = self.core.locked(session, request_id)
            self.core.move(session, request, FAILED, actor=SYSTEM, action=AuditAction.GRANT_FAILED,
                           details={"error": error, "attached": False})
        self.core.notify(NotificationEvent.FAILED, request, error=error)
        return request

    def unsettled(self) -> dict[int, int]:
        """Requests now `approved` or `granting`: id -> row version. A caller that sees
        one again at the same version a while later knows nobody has moved it since."""
        with self.core.sessions() as session:
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
        now = now or self.core.clock.now()
        still = {request_id for request_id, version in self.unsettled().items()
                 if seen.get(request_id) == version}
        if not still:
            return []
        with self.core.sessions() as session:
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
        request = self.core.get(request_id)
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
                    request_id, f"it was approved {fmt_duration(waited.total_seconds())} "
                    "ago but never granted (the bot stopped), which is longer than the "
                    "access asked for; nothing was attached. Request it again.")
            except LifecycleError as exc:
                log.info("recovering request %s: %s", request_id, exc)
                return None
            outcome = "failed it (too long after the approval); nothing was attached"
        self._alert_recovered(result, APPROVED, outcome, ())
        return request_id

    def _recover_granting(self, grant_id: str, now: datetime) -> int | None:
        with self.core.sessions() as session:
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
                plan = self.core.plan_builder(rebuild_context(grant, request))
                if plan.kind != kind or tuple(p.name for p in plan.policies) != names:
                    raise GrantError("the rebuilt plan differs from the recorded one",
                                     transient=False)
                attached = self.core.granter.attach(plan)
            except GrantError as exc:
                if exc.throttled:
                    return None  # IAM is busy, not refusing: the next sweep tries again
                problem = f"its policy could not be attached again ({exc})"
            except Exception as exc:  # any other refusal: clean up and fail below
                problem = f"its policy could not be attached again ({exc})"
        if not problem:
            with self.core.transaction() as session:
                request = self.core.locked(session, grant.request_id)
                row = session.get_one(Grant, grant_id, populate_existing=True)
                if row.state != GRANTING:
                    return None  # the process that was attaching it finished meanwhile
                row.state, row.attached_at = ACTIVE, self.core.clock.now()
                row.document_hash = combined_hash([a.document_hash for a in attached])
                self.core.move(session, request, ACTIVE, actor=SYSTEM, action=AuditAction.GRANTED,
                               details={"grant_id": row.id, "recovered": True,
                                        "policy_names": list(names),
                                        "expires_at": row.expires_at.isoformat()})
            self.core.notify(NotificationEvent.GRANTED, request,
                             grant_id=grant_id, policy_names=list(names),
                             expires_at=grant.expires_at.isoformat(), recovered=True)
            self._alert_recovered(request, GRANTING, "attached it again, with the "
                                  "expiry that was planned", names)
            return request.id
        try:
            self.core.granter.revoke(grant.principal_arn, kind, names)
        except GrantError as exc:
            if exc.throttled:
                return None  # the next sweep tries again
            # Cannot tell what is attached: it must stay visible, not be called failed.
            if not request.alert_ts:
                self.core.send_alert(request, Alert(
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
        with self.core.transaction() as session:
            request = self.core.locked(session, grant.request_id)
            row = session.get_one(Grant, grant_id, populate_existing=True)
            if row.state != GRANTING:
                return None
            row.state, row.last_error = FAILED, error
            self.core.move(session, request, FAILED, actor=SYSTEM, action=AuditAction.GRANT_FAILED,
                           details={"grant_id": row.id, "recovered": True, "error": error})
        self.core.notify(NotificationEvent.FAILED, request, grant_id=grant_id, error=error)
        self._alert_recovered(request, GRANTING, f"failed it ({problem}) and removed "
                              "whatever reached IAM", names)
        return request.id

    def _alert_recovered(self, request: AccessRequest, was: RequestState, outcome: str,
                         policy_names: tuple[str, ...]) -> None:
        self.core.send_alert(request, Alert(
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
        cutoff = (now or self.core.clock.now()) - older_than
        with self.core.sessions() as session:
            return list(session.execute(
                select(Grant).where(Grant.state == GRANTING, Grant.created_at <= cutoff)
                .order_by(Grant.created_at)
            ).scalars())

    def finish_stuck_grant(self, grant_id: str, *, attached: bool,
                           actor: str = RECONCILE_ACTOR) -> AccessRequest:
        """Settle a grant stuck in `granting` after reconciliation looked at IAM: the
        policies are there (active, expiry as planned) or not (failed)."""
        with self.core.transaction() as session:
            grant = session.get(Grant, grant_id)
            if grant is None:
                raise NotFound(f"There is no grant {grant_id}.")
            request = self.core.locked(session, grant.request_id)
            grant = session.get_one(Grant, grant_id, populate_existing=True)
            if grant.state != GRANTING:
                raise InvalidTransition(f"Grant {grant_id} is {grant.state}, not granting.")
            if attached:
                grant.state, grant.attached_at = ACTIVE, self.core.clock.now()
                self.core.move(session, request, ACTIVE, actor=actor, action=AuditAction.GRANTED,
                               details={"grant_id": grant.id, "recovered": True,
                                        "expires_at": grant.expires_at.isoformat()})
            else:
                grant.state, grant.last_error = FAILED, "not attached (found by reconciliation)"
                self.core.move(session, request, FAILED, actor=actor,
                               action=AuditAction.GRANT_FAILED,
                               details={"grant_id": grant.id, "recovered": True})
        if attached:
            self.core.notify(NotificationEvent.GRANTED, request,
                             grant_id=grant.id, policy_names=grant.policy_names,
                             expires_at=grant.expires_at.isoformat())
        else:
            self.core.notify(NotificationEvent.FAILED, request,
                             grant_id=grant.id, error=grant.last_error)
        return request


class _QueuedNotice:
    """The one `grant_queued` notification a grant may send, now or from a timer; never
    after stop() (the grant is settled, and its outcome is what the requester hears)."""

    def __init__(self, core: Transitions, request: AccessRequest) -> None:
        self.core = core
        self.request = request
        self._lock = threading.Lock()
        self._closed = False
        self._timer: threading.Timer | None = None

    def tell(self, waited: float | None, expected: float) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.core.notify(
            NotificationEvent.GRANT_QUEUED, self.request,
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
