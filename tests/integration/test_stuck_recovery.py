"""Requests a crashed process left `approved` or `granting` are settled by the scheduler's
recovery (LifecycleExpiryWork.recover_stuck over RequestService.recover_stuck), on SQLite
and PostgreSQL: granted when the approval still makes sense, failed with nothing attached
otherwise; the requester is told, the alerts channel hears of it, and the same request can
be made again. A request counts as stuck once the scheduler has seen it unchanged for
`stuck_after` by its own clock.

A crash is a BaseException (SystemExit) raised at the point the process would die, which
no `except Exception` on the way catches, like a SIGKILL leaves the database."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from alerts_kit import RecordingAlerter
from doubles import FakeClock, InMemoryGranter, RecordingNotifier
from expiry_kit import LEAD, entries
from sqlalchemy import update

from bot.catalog import Catalog
from bot.db import SessionFactory
from bot.expiry import LifecycleExpiryWork
from bot.lifecycle import GrantContext, RequestService
from bot.models import AccessRequest
from bot.ports import AttachedPolicy, GrantPlan

ALICE = "U0ALICE"
STUCK_AFTER = timedelta(seconds=30)


class Killed(SystemExit):
    pass


class DiesAfterAttach(InMemoryGranter):
    """Attaches, then the process dies before recording it."""

    def __init__(self, inner: InMemoryGranter) -> None:
        super().__init__()
        self.inner = inner

    def attach(self, plan: GrantPlan) -> tuple[AttachedPolicy, ...]:
        self.inner.attach(plan)
        raise Killed("killed after attach")


@pytest.fixture
def work(request_service: RequestService, session_factory: SessionFactory
         ) -> LifecycleExpiryWork:
    return LifecycleExpiryWork(request_service, session_factory, stuck_after=STUCK_AFTER)


def recover(work: LifecycleExpiryWork, clock: FakeClock) -> int:
    """Two sweeps a whole stuck_after apart, as the scheduler runs them."""
    work.recover_stuck(clock.now())
    clock.advance(STUCK_AFTER)
    return work.recover_stuck(clock.now())


@pytest.fixture
def alerter(request_service: RequestService) -> RecordingAlerter:
    request_service.alerter = RecordingAlerter()
    return request_service.alerter


def crash_while_approving(service: RequestService, entry_id: str, *, at: str,
                          minutes: int = 30) -> int:
    """Submit and approve; the process dies `at` 'plan' (still approved) or 'attach'
    (granting, after IAM got the policy)."""
    request = service.submit(requester=ALICE, entry_id=entry_id, reason="incident 77",
                             duration=timedelta(minutes=minutes))
    real_builder, real_granter = service.plan_builder, service.granter
    if at == "plan":
        def dying_builder(context: GrantContext) -> GrantPlan:
            raise Killed("killed while planning")
        service.plan_builder = dying_builder
    else:
        assert isinstance(real_granter, InMemoryGranter)
        service.granter = DiesAfterAttach(real_granter)
    with pytest.raises(Killed):
        service.approve(request.id, LEAD)
    service.plan_builder, service.granter = real_builder, real_granter
    return request.id


def held(granter: InMemoryGranter) -> Sequence[str]:
    return sorted(name for names in granter.policies.values() for name in names)


def test_an_approved_request_left_by_a_crash_is_granted_and_the_alert_names_it(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        granter: InMemoryGranter, notifier: RecordingNotifier,
        alerter: RecordingAlerter, work: LifecycleExpiryWork) -> None:
    (entry,) = entries(catalog, 1)
    request_id = crash_while_approving(request_service, entry, at="plan")
    assert request_service.get(request_id).state == "approved"

    # Not before the scheduler has seen it unchanged for a whole interval, however old its
    # own timestamps look: a live grant may be under way on a host whose clock differs.
    assert work.recover_stuck(clock.now()) == 0
    clock.advance(STUCK_AFTER - timedelta(seconds=1))
    assert work.recover_stuck(clock.now()) == 0
    clock.advance(timedelta(seconds=1))
    assert work.recover_stuck(clock.now()) == 1

    request = request_service.get(request_id)
    assert request.state == "active"
    (grant,) = request.grants
    assert held(granter) == list(grant.policy_names)
    assert grant.expires_at == clock.now() + timedelta(minutes=30)  # full duration from now
    assert notifier.events(request_id)[-1] == "granted"
    (alert,) = alerter.sent
    assert alert.kind == "stuck_request" and alert.request_id == request_id
    assert alert.requester == ALICE and alert.principal_arn == request.principal_arn
    assert "left approved" in alert.summary and "granted it now" in alert.summary
    assert recover(work, clock) == 0


def test_an_approval_older_than_the_access_asked_for_fails_and_can_be_asked_again(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        granter: InMemoryGranter, notifier: RecordingNotifier,
        alerter: RecordingAlerter, work: LifecycleExpiryWork) -> None:
    (entry,) = entries(catalog, 1)
    request_id = crash_while_approving(request_service, entry, at="plan", minutes=30)
    clock.advance(timedelta(minutes=31))  # down for longer than the grant would have lasted

    assert recover(work, clock) == 1
    assert request_service.get(request_id).state == "failed"
    assert held(granter) == []
    failed = [n for n in notifier.sent if n.request_id == request_id and n.event == "failed"]
    assert "longer than the access asked for" in failed[0].detail["error"]
    assert "failed it" in alerter.sent[0].summary

    again = request_service.submit(requester=ALICE, entry_id=entry, reason="incident 77",
                                   duration=timedelta(minutes=30))
    assert again.state == "pending"


def test_a_grant_left_granting_after_its_attach_is_finished_with_its_planned_expiry(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        granter: InMemoryGranter, notifier: RecordingNotifier,
        alerter: RecordingAlerter, work: LifecycleExpiryWork) -> None:
    (entry,) = entries(catalog, 1)
    request_id = crash_while_approving(request_service, entry, at="attach")
    (grant,) = request_service.get(request_id).grants
    assert grant.state == "granting" and held(granter) == list(grant.policy_names)
    planned_expiry = grant.expires_at

    clock.advance(STUCK_AFTER)
    assert recover(work, clock) == 1
    request = request_service.get(request_id)
    assert request.state == "active"
    (grant,) = request.grants
    assert grant.state == "active" and grant.expires_at == planned_expiry
    assert grant.document_hash is not None
    assert held(granter) == list(grant.policy_names)
    assert notifier.events(request_id)[-1] == "granted"
    assert alerter.sent[0].policy_names == tuple(grant.policy_names)


def test_a_grant_left_granting_too_long_is_removed_and_failed(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        granter: InMemoryGranter, notifier: RecordingNotifier,
        alerter: RecordingAlerter, work: LifecycleExpiryWork) -> None:
    (entry,) = entries(catalog, 1)
    request_id = crash_while_approving(request_service, entry, at="attach", minutes=30)
    clock.advance(timedelta(minutes=16))  # less than half of the window left

    assert recover(work, clock) == 1
    request = request_service.get(request_id)
    assert request.state == "failed" and request.grants[0].state == "failed"
    assert held(granter) == []  # what reached IAM is gone
    assert notifier.events(request_id)[-1] == "failed"
    assert "removed whatever reached IAM" in alerter.sent[0].summary
    again = request_service.submit(requester=ALICE, entry_id=entry, reason="incident 77",
                                   duration=timedelta(minutes=30))
    assert again.state == "pending"


def test_a_request_that_moved_between_two_sweeps_is_left_to_whoever_moves_it(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        session_factory: SessionFactory, alerter: RecordingAlerter,
        work: LifecycleExpiryWork) -> None:
    (entry,) = entries(catalog, 1)
    request_id = crash_while_approving(request_service, entry, at="attach")
    assert work.recover_stuck(clock.now()) == 0
    # Another process is still at it: the row changes (here: its version goes up).
    with session_factory.begin() as session:
        session.execute(update(AccessRequest).where(AccessRequest.id == request_id)
                        .values(version=AccessRequest.version + 1))
    clock.advance(STUCK_AFTER)
    assert work.recover_stuck(clock.now()) == 0
    assert request_service.get(request_id).state == "granting"
    clock.advance(STUCK_AFTER)  # unchanged for a whole interval since: now it is stuck
    assert work.recover_stuck(clock.now()) == 1
    assert request_service.get(request_id).state == "active"


def test_a_grant_whose_cleanup_fails_stays_granting_and_is_alerted_once(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        granter: InMemoryGranter, alerter: RecordingAlerter,
        work: LifecycleExpiryWork) -> None:
    (entry,) = entries(catalog, 1)
    request_id = crash_while_approving(request_service, entry, at="attach", minutes=30)
    clock.advance(timedelta(minutes=16))
    granter.fail_revoke("access denied", transient=False, code="AccessDenied")

    assert recover(work, clock) == 0
    clock.advance(STUCK_AFTER)
    assert work.recover_stuck(clock.now()) == 0  # every sweep tries again
    assert request_service.get(request_id).state == "granting"
    (alert,) = alerter.sent
    assert alert.kind == "stuck_request" and "access denied" in alert.summary

    granter.heal()
    clock.advance(STUCK_AFTER)
    assert work.recover_stuck(clock.now()) == 1
    assert request_service.get(request_id).state == "failed"
    assert held(granter) == []
