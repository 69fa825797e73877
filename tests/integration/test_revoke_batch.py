"""Batched revocation (RequestService.revoke_due_batch and the expiry work built on it), on
SQLite and PostgreSQL: each grant ends exactly as grant-by-grant revocation leaves it, with
one audit event per transition on a chain that verifies; two batch callers never revoke a
grant twice; grants claimed by a batch that died are finished after their lease."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alerts_kit import RecordingAlerter
from doubles import FakeClock, InMemoryGranter, RecordingNotifier, StaticPrincipalDirectory
from expiry_kit import entries, make_active
from sqlalchemy import select
from sqlalchemy.orm.exc import StaleDataError

from bot.audit import NewEvent, append_events, verify_chain
from bot.catalog import Catalog
from bot.db import SessionFactory, make_engine, make_session_factory
from bot.expiry import LifecycleExpiryWork
from bot.lifecycle import RequestService
from bot.models import AccessRequest, AuditEvent, Grant
from bot.ports import PolicyKind
from bot.states import IRREVOCABLE, REVOKING

REQUESTERS = ("U0ALICE", "U0BOB")


def make_many(service: RequestService, catalog: Catalog, count: int, minutes: int = 30
              ) -> list[str]:
    per_requester = (count + len(REQUESTERS) - 1) // len(REQUESTERS)
    chosen = entries(catalog, per_requester)
    pairs = [(requester, entry) for requester in REQUESTERS for entry in chosen][:count]
    return [make_active(service, entry, minutes, requester) for requester, entry in pairs]


def grant_row(sessions: SessionFactory, grant_id: str) -> Grant:
    with sessions() as session:
        return session.get_one(Grant, grant_id)


def audit_of(sessions: SessionFactory, request_id: int) -> list[tuple[str, dict[str, Any]]]:
    with sessions() as session:
        return [(action, details) for action, details in session.execute(
            select(AuditEvent.action, AuditEvent.details)
            .where(AuditEvent.request_id == request_id).order_by(AuditEvent.seq))]


def chain_ok(sessions: SessionFactory) -> bool:
    with sessions() as session:
        return verify_chain(session).ok


def other_service(database_url: str, like: RequestService, granter: Any
                  ) -> tuple[RequestService, sa.Engine]:
    """A second service on its own engine, as a second scheduler process would have."""
    engine = make_engine(database_url)
    return RequestService(
        sessions=make_session_factory(engine), catalog=like.catalog, config=like.config,
        granter=granter, notifier=RecordingNotifier(), approvers=like.approvers,
        principals=StaticPrincipalDirectory({}), clock=like.clock,
        plan_builder=like.plan_builder), engine


def test_batch_revokes_every_due_grant_and_leaves_the_rest(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        granter: InMemoryGranter, notifier: RecordingNotifier,
        session_factory: SessionFactory) -> None:
    due = make_many(request_service, catalog, 5, minutes=30)
    later = make_active(request_service, entries(catalog, 6)[5], minutes=60)
    clock.advance(timedelta(minutes=30))

    with ThreadPoolExecutor(4) as pool:
        outcomes = request_service.revoke_due_batch(limit=200, executor=pool)

    assert sorted(o.grant_id for o in outcomes) == sorted(due)
    assert {o.state for o in outcomes} == {"revoked"}
    assert request_service.revoke_due_batch() == []
    for grant_id in due:
        grant = grant_row(session_factory, grant_id)
        assert grant.state == "revoked" and grant.revoked_at == clock.now()
        assert grant.revoke_reason == "expiry" and grant.revoked_by == "system"
        assert grant.next_attempt_at is None
        assert not granter.held(grant.principal_arn) & set(grant.policy_names)
        assert request_service.get(grant.request_id).state == "revoked"
        actions = [a for a, _ in audit_of(session_factory, grant.request_id)]
        assert actions[-2:] == ["revoking", "revoked"]
        assert actions.count("revoking") == actions.count("revoked") == 1
        _, revoked = audit_of(session_factory, grant.request_id)[-1]
        assert revoked == {"to": "revoked", "grant_id": grant_id, "reason": "expiry",
                           "attempts": 1, "lag_seconds": 0.0}
        assert notifier.events(grant.request_id)[-1] == "revoked"
    untouched = grant_row(session_factory, later)
    assert untouched.state == "active" and untouched.next_attempt_at is None
    assert len(granter.revoke_calls) == 5
    assert chain_ok(session_factory)


def test_a_batch_writes_rows_as_one_by_one_revocation_does_and_moves_their_versions(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        session_factory: SessionFactory) -> None:
    """The batch writes its rows in bulk, past the ORM's per-row version check: the same
    columns must change, and the version must still go up so a stale writer fails."""
    one_by_one, batched = (make_active(request_service, entry, minutes=30)
                           for entry in entries(catalog, 2))
    request_ids = {g: grant_row(session_factory, g).request_id for g in (one_by_one, batched)}
    for grant_id in (one_by_one, batched):
        # An extension waiting for approval: revoking drops it.
        request_service.request_extension(request_ids[grant_id], "U0ALICE",
                                          timedelta(minutes=30))
    with session_factory() as session:
        versions = {g: session.get_one(AccessRequest, r).version for g, r in request_ids.items()}
        stale = session.get_one(AccessRequest, request_ids[batched])
    clock.advance(timedelta(minutes=31))

    # One grant through revoke(), the other in a batch: the same claim and settle code,
    # one written by the ORM's flush, the other in bulk.
    assert request_service.revoke(request_ids[one_by_one], "system", "expiry").state == (
        "revoked")
    assert [o.grant_id for o in request_service.revoke_due_batch()] == [batched]

    def left(grant_id: str) -> tuple[Any, ...]:
        grant = grant_row(session_factory, grant_id)
        with session_factory() as session:
            request = session.get_one(AccessRequest, grant.request_id)
        return (request.state, request.updated_at, request.revoke_requested_at,
                request.revoked_at, request.extension_seconds, request.extension_requested_at,
                request.version - versions[grant_id], grant.state, grant.revoke_reason,
                grant.revoked_by, grant.revoked_at, grant.next_attempt_at,
                grant.revoke_attempts, grant.last_error)

    assert left(batched) == left(one_by_one)
    assert left(batched)[:7] == ("revoked", clock.now(), clock.now(), clock.now(), None, None, 2)
    with session_factory() as session:
        session.add(stale)  # read before the revoke: its version is behind
        stale.reason = "edited by someone who read it before the revoke"
        with pytest.raises(StaleDataError):
            session.commit()
    assert chain_ok(session_factory)


def test_batches_take_the_earliest_expiries_first_up_to_the_limit(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        session_factory: SessionFactory) -> None:
    chosen = entries(catalog, 5)
    by_expiry = [make_active(request_service, entry, minutes=10 + i)
                 for i, entry in enumerate(chosen)]
    clock.advance(timedelta(minutes=20))

    first = request_service.revoke_due_batch(limit=2)
    second = request_service.revoke_due_batch(limit=2)
    third = request_service.revoke_due_batch(limit=2)

    assert [o.grant_id for o in first] == by_expiry[:2]
    assert [o.grant_id for o in second] == by_expiry[2:4]
    assert [o.grant_id for o in third] == by_expiry[4:]
    assert request_service.revoke_due_batch(limit=2) == []
    assert chain_ok(session_factory)


def _summary(sessions: SessionFactory, grant_ids: Sequence[str], now: Any
             ) -> list[tuple[Any, ...]]:
    """What a revocation left behind, without ids and absolute times, to compare paths."""
    rows = []
    for grant_id in grant_ids:
        grant = grant_row(sessions, grant_id)
        trail = audit_of(sessions, grant.request_id)
        first = [action for action, _ in trail].index("revoking")
        events = [(action, {k: v for k, v in details.items()
                            if k not in ("grant_id", "next_attempt_at")})
                  for action, details in trail[first:]]
        rows.append((grant.state, grant.revoke_attempts, grant.last_error,
                     None if grant.next_attempt_at is None else grant.next_attempt_at - now,
                     events))
    return rows


@pytest.mark.parametrize("transient", [True, False], ids=["transient", "permanent"])
def test_failed_revokes_end_exactly_as_one_by_one_revocation_leaves_them(
        transient: bool, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, granter: InMemoryGranter, notifier: RecordingNotifier,
        session_factory: SessionFactory) -> None:
    """Two groups of four grants, the first two revokes of each group failing: the first
    group revoked grant by grant (revoke, for expiry), the second in one batch."""
    chosen = entries(catalog, 8)
    code = "Throttling" if transient else "AccessDenied"
    one_by_one = [make_active(request_service, e, minutes=30) for e in chosen[:4]]
    clock.advance(timedelta(minutes=30))
    granter.fail_revoke("refused", transient=transient, times=2, code=code)
    for grant_id in one_by_one:
        request_service.revoke(grant_row(session_factory, grant_id).request_id, "system",
                               "expiry")
    expected = _summary(session_factory, one_by_one, clock.now())
    # Finish the first group, so its retries stay out of the batch below.
    granter.heal()
    clock.advance(request_service.config.timings.irrevocable_retry)
    request_service.revoke_due_batch()
    assert request_service.due_for_revocation() == []

    batched = [make_active(request_service, e, minutes=30) for e in chosen[4:]]
    clock.advance(timedelta(minutes=30))
    granter.fail_revoke("refused", transient=transient, times=2, code=code)
    outcomes = request_service.revoke_due_batch()
    got = _summary(session_factory, batched, clock.now())

    # Which grants hit the failures depends on order among equal expiries: compare sets.
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    failed_state = REVOKING if transient else IRREVOCABLE
    failed = [o.grant_id for o in outcomes if o.state == failed_state]
    assert len(failed) == 2 and len(outcomes) == 4
    assert sum(o.state == "revoked" for o in outcomes) == 2
    assert {o.error for o in outcomes if o.grant_id in failed} == {f"{code}: refused"}
    retry_in = {row[3] for row in got if row[0] == failed_state}
    if transient:
        assert retry_in == {request_service.revoke_backoff}  # first retry after 30 s
    else:
        assert retry_in == {request_service.config.timings.irrevocable_retry}
        for grant_id in failed:
            request_id = grant_row(session_factory, grant_id).request_id
            assert notifier.events(request_id)[-1] == "irrevocable"
    assert chain_ok(session_factory)

    # The failed ones come due again and a later batch finishes them.
    granter.heal()
    clock.advance(request_service.config.timings.irrevocable_retry)
    states = (REVOKING,) if transient else (IRREVOCABLE,)
    retried = request_service.revoke_due_batch(states=states)
    assert set(failed) <= {o.grant_id for o in retried}
    assert all(grant_row(session_factory, g).state == "revoked" for g in batched)
    _, details = audit_of(session_factory, grant_row(session_factory, failed[0]).request_id)[-1]
    assert details["attempts"] == 2


def test_states_narrow_the_batch_to_the_kind_of_work_asked_for(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        granter: InMemoryGranter, session_factory: SessionFactory) -> None:
    first, second = entries(catalog, 2)
    stuck = make_active(request_service, first, minutes=30)
    fresh = make_active(request_service, second, minutes=31)
    clock.advance(timedelta(minutes=31))
    granter.fail_revoke("denied", transient=False, times=1, code="AccessDenied")
    request_service.revoke_due_batch(limit=1)
    assert grant_row(session_factory, stuck).state == IRREVOCABLE

    clock.advance(request_service.config.timings.irrevocable_retry)
    assert request_service.revoke_due_batch(states=(IRREVOCABLE,))[0].grant_id == stuck
    assert grant_row(session_factory, fresh).state == "active"
    assert [o.grant_id for o in request_service.revoke_due_batch(states=("active",))] == [fresh]


class SlowGranter(InMemoryGranter):
    """Revokes take a few milliseconds, so two racing batches overlap."""

    def revoke(self, principal_arn: str, kind: PolicyKind, policy_names: Sequence[str]) -> None:
        time.sleep(0.005)
        super().revoke(principal_arn, kind, policy_names)


def test_two_batch_callers_at_once_never_revoke_a_grant_twice(
        database_url: str, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, session_factory: SessionFactory) -> None:
    grant_ids = make_many(request_service, catalog, 30, minutes=30)
    clock.advance(timedelta(minutes=31))
    granter = SlowGranter()
    callers = [other_service(database_url, request_service, granter) for _ in range(2)]
    handled: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def drain(index: int) -> None:
        service = callers[index][0]
        start.wait()
        with ThreadPoolExecutor(4) as pool:
            while outcomes := service.revoke_due_batch(limit=5, executor=pool):
                handled[index].extend(o.grant_id for o in outcomes)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for _, engine in callers:
        engine.dispose()

    assert sorted(handled[0] + handled[1]) == sorted(grant_ids)
    calls = [names for _, _, names in granter.revoke_calls]
    assert len(calls) == len(set(calls)) == 30
    for grant_id in grant_ids:
        grant = grant_row(session_factory, grant_id)
        assert grant.state == "revoked"
        actions = [a for a, _ in audit_of(session_factory, grant.request_id)]
        assert actions.count("revoking") == actions.count("revoked") == 1
    assert chain_ok(session_factory)


class CrashingGranter(InMemoryGranter):
    """The process dies at the first IAM call of a batch (after the claim committed)."""

    crash = True

    def revoke(self, principal_arn: str, kind: PolicyKind, policy_names: Sequence[str]) -> None:
        if self.crash:
            raise SystemExit("killed")
        super().revoke(principal_arn, kind, policy_names)


def test_grants_claimed_by_a_batch_that_died_are_finished_after_the_lease(
        database_url: str, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, granter: InMemoryGranter, session_factory: SessionFactory) -> None:
    grant_ids = make_many(request_service, catalog, 4, minutes=30)
    clock.advance(timedelta(minutes=30))
    crashing = CrashingGranter()
    dying, engine = other_service(database_url, request_service, crashing)
    with pytest.raises(SystemExit):
        dying.revoke_due_batch()
    engine.dispose()
    claimed_at = clock.now()
    for grant_id in grant_ids:
        grant = grant_row(session_factory, grant_id)
        assert grant.state == REVOKING
        assert grant.next_attempt_at == claimed_at + request_service.claim_lease

    # While the lease runs, nobody touches them.
    clock.advance(request_service.claim_lease - timedelta(seconds=1))
    assert request_service.revoke_due_batch() == []
    assert granter.revoke_calls == []

    clock.advance(timedelta(seconds=1))
    outcomes = request_service.revoke_due_batch()
    assert sorted(o.grant_id for o in outcomes) == sorted(grant_ids)
    for grant_id in grant_ids:
        grant = grant_row(session_factory, grant_id)
        assert grant.state == "revoked"
        assert not granter.held(grant.principal_arn) & set(grant.policy_names)
        actions = [a for a, _ in audit_of(session_factory, grant.request_id)]
        assert actions.count("revoking") == actions.count("revoked") == 1
    assert chain_ok(session_factory)


def test_an_unexpected_error_counts_as_an_attempt_and_ends_irrevocable_and_alerted(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        session_factory: SessionFactory) -> None:
    grant_ids = make_many(request_service, catalog, 3, minutes=30)
    clock.advance(timedelta(minutes=30))
    original = request_service.granter
    broken = grant_row(session_factory, grant_ids[0]).policy_names
    alerter = RecordingAlerter()
    request_service.alerter = alerter

    class Flaky(InMemoryGranter):
        def revoke(self, principal_arn: str, kind: PolicyKind,
                   policy_names: Sequence[str]) -> None:
            if list(policy_names) == list(broken):
                raise RuntimeError("bug in an adapter")
            original.revoke(principal_arn, kind, policy_names)

    request_service.granter = Flaky()
    outcomes = {o.grant_id: o for o in request_service.revoke_due_batch()}
    assert sorted(outcomes) == sorted(grant_ids)
    assert [outcomes[g].state for g in grant_ids[1:]] == ["revoked", "revoked"]
    failing = grant_row(session_factory, grant_ids[0])
    assert failing.state == REVOKING and failing.revoke_attempts == 1
    assert failing.last_error == "UnexpectedError: unexpected RuntimeError: bug in an adapter"
    assert failing.next_attempt_at == clock.now() + request_service.revoke_backoff

    # Retried with backoff like any failure, not after every claim lease for ever.
    for _ in range(request_service.max_revoke_attempts - 1):
        clock.advance(request_service.revoke_backoff_cap)
        assert len(request_service.revoke_due_batch()) == 1
    failing = grant_row(session_factory, grant_ids[0])
    assert failing.state == IRREVOCABLE
    assert failing.revoke_attempts == request_service.max_revoke_attempts
    (alert,) = alerter.sent
    assert alert.kind == "irrevocable" and alert.request_id == failing.request_id
    assert alert.policy_names == tuple(broken)
    assert alert.principal_arn == failing.principal_arn and alert.requester == "U0ALICE"

    # A later retry that works follows the alert up in its thread.
    request_service.granter = original
    clock.advance(request_service.config.timings.irrevocable_retry)
    assert [o.state for o in request_service.revoke_due_batch()] == ["revoked"]
    followup = alerter.sent[-1]
    assert followup.kind == "irrevocable_resolved"
    assert followup.follows_up is not None and followup.follows_up.ts == "1.000"
    assert chain_ok(session_factory)


def test_expiry_work_drains_every_due_grant_in_batches_and_counts_only_its_revocations(
        request_service: RequestService, catalog: Catalog, clock: FakeClock,
        granter: InMemoryGranter, session_factory: SessionFactory) -> None:
    grant_ids = make_many(request_service, catalog, 7, minutes=30)
    work = LifecycleExpiryWork(request_service, session_factory, revoke_workers=3,
                               batch_size=3)
    assert work.revoke_overdue(clock.now()) == 0  # not due yet
    clock.advance(timedelta(minutes=30))

    # One drain takes every due grant, in batches of three (two in flight at once).
    assert work.revoke_overdue(clock.now()) == 7
    assert all(grant_row(session_factory, g).state == "revoked" for g in grant_ids)
    assert work.revoke_overdue(clock.now()) == 0
    assert len(granter.revoke_calls) == 7
    assert work.next_expiry() is None
    assert chain_ok(session_factory)


def test_append_events_links_like_appending_one_by_one(
        session_factory: SessionFactory, clock: FakeClock) -> None:
    def event(n: int) -> NewEvent:
        return NewEvent(at=clock.now(), actor="system", action=f"test-{n}", request_id=None,
                        details={"n": n, "when": clock.now()})

    with session_factory.begin() as session:
        assert append_events(session, []) == []
        single = append_events(session, [event(1)])
        batch = append_events(session, [event(2), event(3), event(4)])
    assert [e.seq for e in single + batch] == [1, 2, 3, 4]
    assert [e.prev_hash for e in batch] == [single[0].hash, batch[0].hash, batch[1].hash]
    assert chain_ok(session_factory)
