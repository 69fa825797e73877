"""The request state machine on a real database (SQLite and PostgreSQL): every allowed
transition, every refused one, pending timeout, extension, revocation and its retries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from doubles import FakeClock, InMemoryGranter, RecordingNotifier
from sqlalchemy import func, select

from bot.audit import verify_chain
from bot.config import parse_config
from bot.db import SessionFactory
from bot.lifecycle import (
    AlreadyActive,
    DuplicateVote,
    GrantContext,
    InvalidRequest,
    InvalidTransition,
    NotAllowed,
    NotFound,
    RequestService,
    SelfApproval,
)
from bot.models import AccessRequest, AuditEvent, Grant, Vote

READ = "home/list-instance"
WRITE = "telephony/enable-disable-telephony-options"
CRITICAL = "home/create-instance"
ALICE_ROLE = "arn:aws:iam::111122223333:role/alice-admin"
LEAD, LEAD2 = "U0LEAD01", "U0LEAD02"


def submit(service: RequestService, entry: str = WRITE, requester: str = "U0ALICE",
           hours: float = 1) -> int:
    return service.submit(requester=requester, entry_id=entry, reason="ticket CX-1",
                          duration=timedelta(hours=hours)).id


def actions(session_factory: SessionFactory, request_id: int) -> list[str]:
    with session_factory() as session:
        return list(session.execute(
            select(AuditEvent.action).where(AuditEvent.request_id == request_id)
            .order_by(AuditEvent.seq)).scalars())


def state(service: RequestService, request_id: int) -> str:
    return service.get(request_id).state


def make_active(service: RequestService, entry: str = WRITE) -> int:
    request_id = submit(service, entry)
    service.approve(request_id, LEAD)
    assert state(service, request_id) == "active"
    return request_id


# -- submit ----------------------------------------------------------------------------

def test_submit_records_request_and_audits_it(request_service: RequestService,
                                              session_factory: SessionFactory,
                                              notifier: RecordingNotifier,
                                              clock: FakeClock) -> None:
    request_id = submit(request_service)
    request = request_service.get(request_id)
    entry = request_service.catalog.get(WRITE)
    assert (request.state, request.requester, request.principal_arn) == (
        "pending", "U0ALICE", ALICE_ROLE)
    assert request.entry_hash == entry.content_hash()
    assert request.duration_seconds == 3600 and request.required_approvals == 1
    assert request.instance_alias == "prod"
    assert request.created_at == clock.now() and request.created_at.tzinfo is not None
    assert actions(session_factory, request_id) == ["submitted"]
    assert notifier.events(request_id) == ["submitted"]
    assert notifier.sent[0].detail["channel"] == "C0APPROVALS"


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"entry_id": "no/such-entry"}, InvalidRequest, "no catalog entry"),
    ({"reason": "   "}, InvalidRequest, "reason is empty"),
    # The Slack form's rule (bot.request_rules), judged stripped: 10 to 1000 characters.
    ({"reason": "  too short "}, InvalidRequest, r"at least 10 characters \(you wrote 9\)"),
    ({"reason": "x" * 1001}, InvalidRequest, r"at most 1000 characters \(you wrote 1001\)"),
    ({"duration": timedelta(hours=5)}, InvalidRequest, "at most 4h"),
    ({"duration": timedelta(seconds=10)}, InvalidRequest, "at least 1m"),
    ({"instance": "staging"}, InvalidRequest, "no instance 'staging'"),
    ({"requester": "U0STRANGER"}, NotAllowed, "No IAM principal"),
])
def test_submit_refuses_bad_requests(request_service: RequestService,
                                     session_factory: SessionFactory, kwargs: dict[str, object],
                                     error: type[Exception], text: str) -> None:
    arguments: dict[str, object] = {"requester": "U0ALICE", "entry_id": WRITE,
                                    "reason": "ticket CX-9", "duration": timedelta(hours=1)}
    arguments.update(kwargs)
    with pytest.raises(error, match=text):
        request_service.submit(**arguments)  # type: ignore[arg-type]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(AccessRequest)) == 0
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 0


@pytest.mark.parametrize("reason", ["ten chars!", "y" * 1000])
def test_submit_accepts_reasons_at_the_bounds(request_service: RequestService,
                                              reason: str) -> None:
    padded = f"  {reason}\n"
    request = request_service.submit(requester="U0ALICE", entry_id=WRITE, reason=padded,
                                     duration=timedelta(hours=1))
    assert request.state == "pending" and request.reason == reason  # stored stripped


def test_second_open_request_for_same_entry_and_principal_is_refused(
        request_service: RequestService) -> None:
    first = submit(request_service)
    with pytest.raises(AlreadyActive, match="wait for it") as pending_refusal:
        submit(request_service)
    assert pending_refusal.value.existing_request_id == first
    request_service.approve(first, LEAD)
    with pytest.raises(AlreadyActive, match="extension") as active_refusal:
        submit(request_service)
    assert active_refusal.value.existing_request_id == first
    # Another entry, or the same entry for someone else, is fine.
    submit(request_service, READ)
    submit(request_service, requester="U0BOB")


def test_after_revocation_the_same_entry_can_be_requested_again(
        request_service: RequestService) -> None:
    first = make_active(request_service)
    request_service.revoke(first, "U0ALICE", "done")
    assert state(request_service, submit(request_service)) == "pending"


# -- approve / deny / cancel -------------------------------------------------------------

def test_approval_grants_and_attaches_policy(request_service: RequestService,
                                             granter: InMemoryGranter,
                                             session_factory: SessionFactory,
                                             notifier: RecordingNotifier,
                                             clock: FakeClock) -> None:
    request_id = submit(request_service)
    request = request_service.approve(request_id, LEAD, comment="ok")
    assert request.state == "active"
    loaded = request_service.get(request_id)
    assert [(v.approver, v.decision, v.comment) for v in loaded.votes] == [(LEAD, "approve", "ok")]
    (grant,) = loaded.grants
    assert grant.state == "active" and grant.kind == "inline"
    assert grant.policy_names == [f"connect-access-{grant.id}"]
    assert grant.expires_at == clock.now() + timedelta(hours=1)
    assert grant.account == "111122223333" and grant.document_hash is not None
    assert granter.held(ALICE_ROLE) == {f"connect-access-{grant.id}"}
    assert loaded.approved_at == loaded.granted_at == clock.now()
    assert actions(session_factory, request_id) == [
        "submitted", "vote", "approved", "granting", "granted"]
    assert notifier.events(request_id) == ["submitted", "vote", "approved", "granted"]


def test_requester_cannot_approve_own_request(request_service: RequestService) -> None:
    request_id = submit(request_service, requester="U0LEAD01")
    with pytest.raises(SelfApproval, match="your own request"):
        request_service.approve(request_id, "U0LEAD01")
    with pytest.raises(SelfApproval):
        request_service.deny(request_id, "U0LEAD01")
    assert state(request_service, request_id) == "pending"


def test_approver_must_be_allowed_for_the_tier(request_service: RequestService) -> None:
    critical = submit(request_service, CRITICAL)
    with pytest.raises(NotAllowed, match="critical-tier"):
        request_service.approve(critical, LEAD)  # a lead, but not for critical
    write = submit(request_service, WRITE)
    with pytest.raises(NotAllowed, match="write-tier"):
        request_service.approve(write, "U0SEC1")
    assert state(request_service, critical) == state(request_service, write) == "pending"


def test_one_vote_per_approver(request_service: RequestService,
                               session_factory: SessionFactory) -> None:
    request_id = submit(request_service, CRITICAL)
    request_service.approve(request_id, "U0SEC1")
    with pytest.raises(DuplicateVote):
        request_service.approve(request_id, "U0SEC1")
    with pytest.raises(DuplicateVote):
        request_service.deny(request_id, "U0SEC1")
    assert state(request_service, request_id) == "pending"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Vote)) == 1


def test_n_of_m_approvals(request_service: RequestService, granter: InMemoryGranter) -> None:
    request_id = submit(request_service, CRITICAL)
    after_one = request_service.approve(request_id, "U0SEC1")
    assert after_one.state == "pending" and granter.attach_calls == []
    after_two = request_service.approve(request_id, "U0CISO")  # named directly, not via group
    assert after_two.state == "active" and len(granter.attach_calls) == 1


def test_deny_wins_over_earlier_approvals(request_service: RequestService,
                                          granter: InMemoryGranter,
                                          notifier: RecordingNotifier) -> None:
    request_id = submit(request_service, CRITICAL)
    request_service.approve(request_id, "U0SEC1")
    denied = request_service.deny(request_id, "U0SEC2", comment="not today")
    assert denied.state == "denied" and denied.denied_at is not None
    assert granter.attach_calls == []
    assert notifier.events(request_id)[-1] == "denied"
    with pytest.raises(InvalidTransition, match="already denied"):
        request_service.approve(request_id, "U0CISO")


def test_cancel_by_requester_only_and_only_while_pending(
        request_service: RequestService, session_factory: SessionFactory) -> None:
    request_id = submit(request_service)
    with pytest.raises(NotAllowed, match="Only the person who asked"):
        request_service.cancel(request_id, "U0BOB")
    assert request_service.cancel(request_id, "U0ALICE").state == "cancelled"
    assert actions(session_factory, request_id) == ["submitted", "cancelled"]
    with pytest.raises(InvalidTransition, match="only a pending request"):
        request_service.cancel(request_id, "U0ALICE")
    active = make_active(request_service)
    with pytest.raises(InvalidTransition, match="I'm done"):
        request_service.cancel(active, "U0ALICE")


def test_unknown_request(request_service: RequestService) -> None:
    with pytest.raises(NotFound, match="#999"):
        request_service.approve(999, LEAD)


def test_auto_approve_read_tier(session_factory: SessionFactory,
                                request_service: RequestService, granter: InMemoryGranter,
                                operator_config_data: dict[str, Any]) -> None:
    operator_config_data["routing"]["tiers"]["read"]["auto_approve"] = True
    request_service.config = parse_config(operator_config_data)
    read = request_service.submit(requester="U0ALICE", entry_id=READ, reason="look at queues",
                                  duration=timedelta(hours=1))
    assert read.state == "active" and len(granter.attach_calls) == 1
    assert actions(session_factory, read.id)[:2] == ["submitted", "approved"]
    write = submit(request_service, WRITE)
    assert state(request_service, write) == "pending"


# -- refused transitions from every state ------------------------------------------------

def reach(service: RequestService, granter: InMemoryGranter, target: str) -> int:
    """Drive a request to `target` through the public operations."""
    if target == "failed":
        granter.fail_attach("AccessDenied", transient=False, times=1)
    request_id = submit(service)
    if target == "pending":
        return request_id
    if target == "denied":
        service.deny(request_id, LEAD)
    elif target == "cancelled":
        service.cancel(request_id, "U0ALICE")
    elif target == "timed_out":
        service.expire_pending(service.clock.now() + timedelta(hours=25))
    else:
        service.approve(request_id, LEAD)
    if target in ("revoked", "irrevocable"):
        if target == "irrevocable":
            granter.fail_revoke("AccessDenied", transient=False)
        service.revoke(request_id, "U0ALICE", "done")
    assert state(service, request_id) == target
    return request_id


OPERATIONS: dict[str, Callable[[RequestService, int], object]] = {
    "approve": lambda s, r: s.approve(r, LEAD2),
    "deny": lambda s, r: s.deny(r, LEAD2),
    "cancel": lambda s, r: s.cancel(r, "U0ALICE"),
    "grant": lambda s, r: s.grant(r),
    "revoke": lambda s, r: s.revoke(r, "U0ALICE", "done"),
    "extend": lambda s, r: s.request_extension(r, "U0ALICE", timedelta(hours=1)),
}
ALLOWED = {
    ("pending", "approve"), ("pending", "deny"), ("pending", "cancel"),
    ("active", "revoke"), ("active", "extend"),
}
STATES = ("pending", "denied", "cancelled", "timed_out", "active", "failed", "revoked",
          "irrevocable")


@pytest.mark.parametrize("from_state", STATES)
def test_every_operation_from_every_reachable_state(
        request_service: RequestService, granter: InMemoryGranter,
        session_factory: SessionFactory, from_state: str) -> None:
    for operation, call in OPERATIONS.items():
        request_id = reach(request_service, granter, from_state)
        events_before = actions(session_factory, request_id)
        if (from_state, operation) in ALLOWED:
            call(request_service, request_id)
            assert actions(session_factory, request_id) != events_before
        else:
            with pytest.raises(InvalidTransition):
                call(request_service, request_id)
            assert state(request_service, request_id) == from_state, operation
            assert actions(session_factory, request_id) == events_before, operation
        # Free the entry for the next round.
        if state(request_service, request_id) == "active":
            request_service.revoke(request_id, "U0ALICE", "done")
        if state(request_service, request_id) == "pending":
            request_service.cancel(request_id, "U0ALICE")
        if state(request_service, request_id) in ("irrevocable", "revoking"):
            granter.heal()
            request_service.revoke_due_batch(request_service.clock.now() + timedelta(days=1))
    with session_factory() as session:
        assert verify_chain(session).ok


# -- grant failures ----------------------------------------------------------------------

def test_failed_attach_leaves_nothing_attached(request_service: RequestService,
                                               granter: InMemoryGranter,
                                               notifier: RecordingNotifier,
                                               session_factory: SessionFactory) -> None:
    granter.fail_attach("LimitExceeded: too many policies", times=1)
    request_id = submit(request_service)
    request = request_service.approve(request_id, LEAD)
    assert request.state == "failed" and request.failed_at is not None
    (grant,) = request_service.get(request_id).grants
    assert grant.state == "failed" and "LimitExceeded" in (grant.last_error or "")
    assert granter.held(ALICE_ROLE) == frozenset()
    assert granter.revoke_calls == [(ALICE_ROLE, "inline", (f"connect-access-{grant.id}",))]
    assert notifier.sent[-1].event == "failed"
    assert "LimitExceeded" in notifier.sent[-1].detail["error"]
    assert actions(session_factory, request_id)[-2:] == ["granting", "grant_failed"]


def test_plan_that_cannot_be_built_fails_the_request(request_service: RequestService,
                                                     granter: InMemoryGranter) -> None:
    def too_big(context: GrantContext) -> object:
        raise ValueError("the policy would exceed the role's 10,240-character inline quota")

    request_service.plan_builder = too_big  # type: ignore[assignment]
    request_id = submit(request_service)
    request = request_service.approve(request_id, LEAD)
    assert request.state == "failed"
    assert granter.attach_calls == []
    assert request_service.get(request_id).grants == []


def test_grant_row_is_committed_before_attach(request_service: RequestService,
                                              granter: InMemoryGranter,
                                              session_factory: SessionFactory) -> None:
    """A crash during attach must leave a `granting` row naming the policies."""
    seen: list[tuple[str, list[str]]] = []
    real_attach = granter.attach

    def attach_and_look(plan):  # type: ignore[no-untyped-def]
        with session_factory() as session:
            grant = session.get_one(Grant, plan.grant_id)
            seen.append((grant.state, grant.policy_names))
        return real_attach(plan)

    granter.attach = attach_and_look  # type: ignore[method-assign]
    request_id = submit(request_service)
    request_service.approve(request_id, LEAD)
    (grant,) = request_service.get(request_id).grants
    assert seen == [("granting", [f"connect-access-{grant.id}"])]


# -- pending timeout and reminders ----------------------------------------------------

def test_pending_requests_time_out_after_ttl(request_service: RequestService,
                                             clock: FakeClock,
                                             notifier: RecordingNotifier) -> None:
    old = submit(request_service)
    clock.advance(timedelta(hours=12))
    young = submit(request_service, READ)
    clock.advance(timedelta(hours=11, minutes=59))
    assert request_service.expire_pending() == []
    clock.advance(timedelta(minutes=1))
    assert request_service.expire_pending() == [old]
    assert state(request_service, old) == "timed_out"
    assert state(request_service, young) == "pending"
    assert notifier.events(old)[-1] == "timed_out"
    with pytest.raises(InvalidTransition):
        request_service.approve(old, LEAD)
    assert request_service.expire_pending() == []  # idempotent


def test_pending_reminder_once(request_service: RequestService, clock: FakeClock,
                               notifier: RecordingNotifier) -> None:
    request_id = submit(request_service)
    assert request_service.pending_reminders() == []
    clock.advance(timedelta(hours=1))
    assert request_service.pending_reminders() == [request_id]
    assert request_service.pending_reminders() == []
    assert notifier.events(request_id).count("pending_reminder") == 1


# -- extension -------------------------------------------------------------------------

def test_extension_is_reapproved_and_moves_expiry(request_service: RequestService,
                                                  granter: InMemoryGranter, clock: FakeClock,
                                                  session_factory: SessionFactory,
                                                  notifier: RecordingNotifier) -> None:
    request_id = make_active(request_service)
    (grant,) = request_service.get(request_id).grants
    first_expiry = grant.expires_at
    clock.advance(timedelta(minutes=50))
    with pytest.raises(NotAllowed):
        request_service.request_extension(request_id, "U0BOB", timedelta(hours=1))
    with pytest.raises(InvalidRequest, match="between 1 minute and 4h"):
        request_service.request_extension(request_id, "U0ALICE", timedelta(hours=5))
    request_service.request_extension(request_id, "U0ALICE", timedelta(hours=2))
    with pytest.raises(InvalidTransition, match="already waiting"):
        request_service.request_extension(request_id, "U0ALICE", timedelta(hours=1))
    # The approver of the original round votes again in the new round.
    request_service.approve(request_id, LEAD)
    loaded = request_service.get(request_id)
    (grant,) = loaded.grants
    assert grant.expires_at == first_expiry + timedelta(hours=2)
    assert loaded.state == "active" and loaded.extension_seconds is None
    assert loaded.duration_seconds == 3 * 3600
    # Re-attached with the new time bound in the policy itself.
    last_plan = granter.attach_calls[-1]
    assert last_plan.grant_id == grant.id and last_plan.expires_at == grant.expires_at
    assert actions(session_factory, request_id)[-3:] == ["extension_requested", "vote",
                                                         "extended"]
    assert "extended" in notifier.events(request_id)


def test_extension_denied_keeps_original_expiry(request_service: RequestService) -> None:
    request_id = make_active(request_service)
    expiry = request_service.get(request_id).grants[0].expires_at
    request_service.request_extension(request_id, "U0ALICE", timedelta(hours=1))
    request_service.deny(request_id, LEAD2)
    loaded = request_service.get(request_id)
    assert loaded.state == "active" and loaded.extension_seconds is None
    assert loaded.grants[0].expires_at == expiry
    with pytest.raises(InvalidTransition, match="nothing to approve"):
        request_service.approve(request_id, LEAD)


def test_extension_attach_failure_changes_nothing(request_service: RequestService,
                                                  granter: InMemoryGranter) -> None:
    from bot.lifecycle import GrantFailed

    request_id = make_active(request_service)
    expiry = request_service.get(request_id).grants[0].expires_at
    request_service.request_extension(request_id, "U0ALICE", timedelta(hours=1))
    granter.fail_attach("Throttling", transient=True, times=1)
    with pytest.raises(GrantFailed, match="try again"):
        request_service.approve(request_id, LEAD)
    loaded = request_service.get(request_id)
    assert loaded.grants[0].expires_at == expiry and loaded.extension_seconds == 3600
    request_service.approve(request_id, LEAD)  # the vote was rolled back, so it can retry
    assert request_service.get(request_id).grants[0].expires_at == expiry + timedelta(hours=1)


# -- revocation ------------------------------------------------------------------------

def test_requester_done_revokes_immediately(request_service: RequestService,
                                            granter: InMemoryGranter,
                                            session_factory: SessionFactory) -> None:
    request_id = make_active(request_service)
    with pytest.raises(NotAllowed):
        request_service.revoke(request_id, "U0BOB", "done")
    outcome = request_service.revoke(request_id, "U0ALICE", "done")
    assert outcome.state == "revoked"
    assert granter.held(ALICE_ROLE) == frozenset()
    (grant,) = request_service.get(request_id).grants
    assert (grant.state, grant.revoke_reason, grant.revoked_by) == ("revoked", "done", "U0ALICE")
    assert grant.revocation_lag_seconds == 0.0
    assert actions(session_factory, request_id)[-2:] == ["revoking", "revoked"]


def test_approver_revokes_but_outsider_cannot(request_service: RequestService) -> None:
    request_id = make_active(request_service)
    with pytest.raises(NotAllowed, match="requester or an approver"):
        request_service.revoke(request_id, "U0SEC1", "approver")
    assert request_service.revoke(request_id, LEAD2, "approver").state == "revoked"


def test_expiry_sweep_revokes_due_grants_and_measures_lag(
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter,
        notifier: RecordingNotifier) -> None:
    request_id = make_active(request_service)
    clock.advance(timedelta(minutes=50))
    assert request_service.expiring_soon() != []
    assert request_service.expiring_soon() == []  # told once
    assert request_service.due_for_revocation() == []
    clock.advance(timedelta(minutes=10, seconds=7))
    (grant_id,) = request_service.due_for_revocation()
    assert [g.id for g in request_service.overdue()] == [grant_id]
    (outcome,) = request_service.revoke_due_batch()
    assert outcome.state == "revoked"
    (grant,) = request_service.get(request_id).grants
    assert grant.revoke_reason == "expiry" and grant.revocation_lag_seconds == 7.0
    assert granter.held(ALICE_ROLE) == frozenset()
    assert request_service.revoke_due_batch() == []
    assert "expiring_soon" in notifier.events(request_id)


def test_transient_revoke_failures_back_off_then_succeed(
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter) -> None:
    request_id = make_active(request_service)
    granter.fail_revoke("Rate exceeded", transient=True, times=2)
    outcome = request_service.revoke(request_id, "U0ALICE", "done")
    assert outcome.state == "revoking" and "Throttling" in (outcome.error or "")
    grant = request_service.get(request_id).grants[0]
    assert grant.revoke_attempts == 1 and grant.next_attempt_at == clock.now() + timedelta(
        seconds=30)
    assert request_service.revoke_due_batch() == []  # not yet
    clock.advance(timedelta(seconds=30))
    assert [o.state for o in request_service.revoke_due_batch()] == ["revoking"]
    assert request_service.get(request_id).grants[0].next_attempt_at == clock.now() + timedelta(
        seconds=60)
    clock.advance(timedelta(seconds=60))
    assert [o.state for o in request_service.revoke_due_batch()] == ["revoked"]
    assert state(request_service, request_id) == "revoked"


def test_exhausted_retries_become_irrevocable_then_retried(
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter,
        notifier: RecordingNotifier, session_factory: SessionFactory) -> None:
    request_id = make_active(request_service)
    granter.fail_revoke("Service unavailable", transient=True)
    request_service.revoke(request_id, "U0ALICE", "done")
    for _ in range(4):
        clock.advance(timedelta(minutes=10))
        request_service.revoke_due_batch()
    assert state(request_service, request_id) == "irrevocable"
    grant = request_service.get(request_id).grants[0]
    assert grant.revoke_attempts == 5
    assert grant.next_attempt_at == clock.now() + timedelta(minutes=15)
    alert = [n for n in notifier.sent if n.event == "irrevocable"]
    assert len(alert) == 1 and alert[0].detail["policy_names"] == grant.policy_names
    clock.advance(timedelta(minutes=15))
    assert [o.state for o in request_service.revoke_due_batch()] == ["irrevocable"]
    granter.heal()
    clock.advance(timedelta(minutes=15))
    assert [o.state for o in request_service.revoke_due_batch()] == ["revoked"]
    assert granter.held(ALICE_ROLE) == frozenset()
    assert "irrevocable" in actions(session_factory, request_id)
    assert actions(session_factory, request_id)[-1] == "revoked"


def test_permanent_revoke_failure_is_irrevocable_at_once(
        request_service: RequestService, granter: InMemoryGranter) -> None:
    request_id = make_active(request_service)
    granter.fail_revoke("User is not authorized", transient=False, code="AccessDenied")
    outcome = request_service.revoke(request_id, "U0ALICE", "done")
    assert outcome.state == "irrevocable" and "AccessDenied" in (outcome.error or "")


def test_claimed_revocation_is_not_taken_twice(request_service: RequestService,
                                               clock: FakeClock) -> None:
    """While one worker holds a revoking grant (lease), a sweep elsewhere leaves it."""
    request_id = make_active(request_service)
    clock.advance(timedelta(hours=1))
    (grant_id,) = request_service.due_for_revocation()
    with request_service.sessions.begin() as session:
        grant = session.get_one(Grant, grant_id)
        request = session.get_one(AccessRequest, request_id)
        request_service.revocation._start_revoking(session, request, "system", "expiry")
        grant_lease = grant.next_attempt_at
    assert grant_lease == clock.now() + timedelta(minutes=5)
    assert request_service.due_for_revocation() == []
    assert request_service.revoke_due_batch() == []
    clock.advance(timedelta(minutes=5))  # the holder died; the lease ran out
    (outcome,) = request_service.revoke_due_batch()
    assert outcome.grant_id == grant_id and outcome.state == "revoked"


def test_audit_chain_intact_after_a_full_lifecycle(request_service: RequestService,
                                                   session_factory: SessionFactory) -> None:
    request_id = make_active(request_service)
    request_service.request_extension(request_id, "U0ALICE", timedelta(hours=1))
    request_service.approve(request_id, LEAD2)
    request_service.revoke(request_id, "U0ALICE", "done")
    with session_factory() as session:
        result = verify_chain(session)
    assert result.ok and result.checked == len(actions(session_factory, request_id))


@pytest.mark.parametrize("attached", [True, False])
def test_grant_stuck_in_granting_is_settled_by_reconciliation(
        request_service: RequestService, granter: InMemoryGranter, clock: FakeClock,
        attached: bool) -> None:
    """Simulate a crash right after the `granting` commit: attach never returns."""
    class Crash(Exception):
        pass

    def crash(plan: object) -> object:
        raise Crash

    granter.attach = crash  # type: ignore[assignment, method-assign]
    request_id = submit(request_service)
    with pytest.raises(Crash):
        request_service.approve(request_id, LEAD)
    assert state(request_service, request_id) == "granting"
    assert request_service.stuck_grants() == []  # too fresh to call stuck
    clock.advance(timedelta(minutes=5))
    (stuck,) = request_service.stuck_grants()
    request = request_service.finish_stuck_grant(stuck.id, attached=attached)
    assert request.state == ("active" if attached else "failed")
    with pytest.raises(InvalidTransition):
        request_service.finish_stuck_grant(stuck.id, attached=attached)


def test_reconcile_ends_active_access_through_revoking(
        request_service: RequestService, notifier: RecordingNotifier,
        session_factory: SessionFactory) -> None:
    """The policy is gone from IAM and could not be put back: the request ends revoked
    (the one way out of active), the grant failed with the error."""
    request_id = make_active(request_service)
    request_service.request_extension(request_id, "U0ALICE", timedelta(hours=1))
    (grant,) = request_service.get(request_id).grants
    ended = request_service.end_active_by_reconcile(grant.id, "LimitExceeded: no room")
    assert ended.state == "revoked" and ended.extension_seconds is None
    loaded = request_service.get(request_id)
    assert loaded.revoke_requested_at == loaded.revoked_at is not None
    (grant,) = loaded.grants
    assert (grant.state, grant.last_error, grant.revoke_reason, grant.revoked_by) == (
        "failed", "LimitExceeded: no room", "reconcile", "system:reconcile")
    assert actions(session_factory, request_id)[-2:] == ["revoking", "revoked"]
    told = notifier.sent[-1]
    assert (told.event, told.detail["reason"], told.detail["error"]) == (
        "revoked", "reconcile", "LimitExceeded: no room")
    with pytest.raises(InvalidTransition, match="it became failed while reconcile ran"):
        request_service.end_active_by_reconcile(grant.id, "again")


def test_only_the_bot_revokes_for_expiry(request_service: RequestService) -> None:
    request_id = make_active(request_service)
    with pytest.raises(NotAllowed, match="Only the bot"):
        request_service.revoke(request_id, "U0ALICE", "expiry")
