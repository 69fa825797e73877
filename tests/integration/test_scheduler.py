"""The scheduler's work in-process, on SQLite and PostgreSQL: overdue grants revoked once,
irrevocable ones retried on the longer period, pending requests timed out, reminders sent
once, two workers racing for the same grants, the expiry loop waking at the earliest
expiry (also of grants made after it went to sleep) and draining a mass expiry in batches,
and leadership. The real-process behaviour is in test_scheduler_processes.py."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from doubles import FakeClock, InMemoryGranter, RecordingNotifier, StaticPrincipalDirectory
from expiry_kit import entries, make_active
from sqlalchemy import select

from bot.catalog import Catalog
from bot.db import SessionFactory, make_engine, make_session_factory
from bot.expiry import LifecycleExpiryWork
from bot.leader import LeadershipError, PostgresLeadership, SqliteLeadership, leadership_for
from bot.lifecycle import GrantContext, RequestService
from bot.models import AccessRequest, AuditEvent, Grant
from bot.ports import Notification, SystemClock
from bot.runtime import build_runtime
from bot.scheduler import ExpiryLoop
from bot.settings import Settings


def grant_row(sessions: SessionFactory, grant_id: str) -> Grant:
    with sessions() as session:
        return session.get_one(Grant, grant_id)


def audit_actions(sessions: SessionFactory, request_id: int) -> list[str]:
    with sessions() as session:
        return list(session.execute(
            select(AuditEvent.action).where(AuditEvent.request_id == request_id)
            .order_by(AuditEvent.seq)).scalars())


@pytest.fixture
def work(request_service: RequestService, session_factory: SessionFactory
         ) -> LifecycleExpiryWork:
    return LifecycleExpiryWork(request_service, session_factory)


def test_overdue_grants_are_revoked_once_with_their_lag(
        work: LifecycleExpiryWork, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, granter: InMemoryGranter, session_factory: SessionFactory) -> None:
    first, second = entries(catalog, 2)
    due = make_active(request_service, first, minutes=30)
    later = make_active(request_service, second, minutes=60)
    assert work.revoke_overdue(clock.now()) == 0

    clock.advance(timedelta(minutes=30, seconds=7))
    assert work.revoke_overdue(clock.now()) == 1
    assert work.revoke_overdue(clock.now()) == 0

    revoked = grant_row(session_factory, due)
    assert revoked.state == "revoked"
    assert revoked.revoke_reason == "expiry"
    assert revoked.revocation_lag_seconds == pytest.approx(7)
    assert grant_row(session_factory, later).state == "active"
    assert [call[2] for call in granter.revoke_calls] == [tuple(revoked.policy_names)]
    assert not granter.held("arn:aws:iam::111122223333:role/alice-admin") & set(
        revoked.policy_names)
    assert work.next_expiry() == grant_row(session_factory, later).expires_at


def test_the_next_expiry_is_the_earliest_active_one_as_the_database_has_it_now(
        work: LifecycleExpiryWork, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, session_factory: SessionFactory) -> None:
    assert work.next_expiry() is None
    first, second, third = entries(catalog, 3)
    soon = make_active(request_service, first, minutes=30)
    later = make_active(request_service, second, minutes=60)
    expiry = {g: grant_row(session_factory, g).expires_at for g in (soon, later)}
    assert work.next_expiry() == expiry[soon]
    assert work.next_expiry(after=expiry[soon]) == expiry[later]
    assert work.next_expiry(after=expiry[later]) is None

    # Extended (by the web process, say): the loop finds the new expiry, and the old one
    # revokes nothing.
    with session_factory.begin() as session:
        session.get_one(Grant, soon).expires_at = expiry[later] + timedelta(minutes=30)
    assert work.next_expiry() == expiry[later]
    clock.advance(timedelta(minutes=30))
    assert work.revoke_overdue(clock.now()) == 0
    assert grant_row(session_factory, soon).state == "active"

    # Revoked by hand and made anew: gone from, and added to, the schedule.
    request_service.revoke(grant_row(session_factory, later).request_id, "U0ALICE", "done")
    made = make_active(request_service, third, minutes=5)
    assert work.next_expiry() == grant_row(session_factory, made).expires_at


def test_irrevocable_grants_are_retried_on_the_longer_period(
        work: LifecycleExpiryWork, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, granter: InMemoryGranter, session_factory: SessionFactory) -> None:
    grant_id = make_active(request_service, entries(catalog, 1)[0], minutes=30)
    clock.advance(timedelta(minutes=31))
    granter.fail_revoke("access denied", transient=False, code="AccessDenied")
    assert work.revoke_overdue(clock.now()) == 0
    assert grant_row(session_factory, grant_id).state == "irrevocable"

    granter.heal()
    clock.advance(timedelta(minutes=14))  # irrevocable_retry is 15m in the test config
    assert work.revoke_overdue(clock.now()) == 0
    assert work.retry_irrevocable(clock.now()) == 0
    clock.advance(timedelta(minutes=1, seconds=1))
    assert work.retry_irrevocable(clock.now()) == 1
    assert grant_row(session_factory, grant_id).state == "revoked"


def test_pending_requests_time_out_after_their_ttl(
        work: LifecycleExpiryWork, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, notifier: RecordingNotifier) -> None:
    request = request_service.submit(requester="U0BOB", entry_id=entries(catalog, 1)[0],
                                     reason="ticket CX-2", duration=timedelta(hours=1))
    clock.advance(timedelta(hours=23, minutes=59))
    assert work.expire_pending(clock.now()) == 0
    clock.advance(timedelta(minutes=1))
    assert work.expire_pending(clock.now()) == 1
    assert request_service.get(request.id).state == "timed_out"
    assert "timed_out" in notifier.events(request.id)
    assert work.expire_pending(clock.now()) == 0


def test_reminders_go_out_once_each(
        work: LifecycleExpiryWork, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, notifier: RecordingNotifier, session_factory: SessionFactory
) -> None:
    held, waiting = entries(catalog, 2)
    grant_id = make_active(request_service, held, minutes=30)
    pending = request_service.submit(requester="U0BOB", entry_id=waiting, reason="ticket CX-2",
                                     duration=timedelta(hours=1))
    assert work.send_reminders(clock.now()) == 0

    clock.advance(timedelta(minutes=21))  # 9 minutes left; remind_before_expiry is 10m
    assert work.send_reminders(clock.now()) == 1
    assert work.send_reminders(clock.now()) == 0
    expiring = [n for n in notifier.sent if n.event == "expiring_soon"]
    assert len(expiring) == 1 and expiring[0].detail["grant_id"] == grant_id
    assert expiring[0].detail["requester"] == "U0ALICE"
    assert grant_row(session_factory, grant_id).expiry_reminded_at is not None

    clock.advance(timedelta(minutes=40))  # pending for 61 minutes; the nudge is after 1h
    assert work.send_reminders(clock.now()) == 1
    assert work.send_reminders(clock.now()) == 0
    assert notifier.events(pending.id).count("pending_reminder") == 1
    assert notifier.events().count("expiring_soon") == 1


def test_two_workers_racing_revoke_every_grant_exactly_once(
        database_url: str, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, granter: InMemoryGranter, session_factory: SessionFactory) -> None:
    """Two services on their own engines (as two processes would be), each with a thread
    pool, sweep the same 12 expired grants at once."""
    grant_ids = [make_active(request_service, e, minutes=30) for e in entries(catalog, 12)]
    clock.advance(timedelta(minutes=31))

    def other_worker() -> tuple[LifecycleExpiryWork, sa.Engine]:
        engine = make_engine(database_url)
        sessions = make_session_factory(engine)
        service = RequestService(
            sessions=sessions, catalog=catalog, config=request_service.config,
            granter=granter, notifier=RecordingNotifier(), approvers=request_service.approvers,
            principals=StaticPrincipalDirectory({}), clock=clock,
            plan_builder=request_service.plan_builder)
        return LifecycleExpiryWork(service, sessions, revoke_workers=4), engine

    workers = [other_worker(), other_worker()]
    counts: list[int] = []
    start = threading.Barrier(2)

    def sweep(work: LifecycleExpiryWork) -> None:
        start.wait()
        counts.append(work.revoke_overdue(clock.now()))

    threads = [threading.Thread(target=sweep, args=(w,)) for w, _ in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for _, engine in workers:
        engine.dispose()

    assert sum(counts) == 12
    assert len(granter.revoke_calls) == 12
    assert len({call[2] for call in granter.revoke_calls}) == 12
    for grant_id in grant_ids:
        grant = grant_row(session_factory, grant_id)
        assert grant.state == "revoked"
        assert audit_actions(session_factory, grant.request_id).count("revoked") == 1
        assert audit_actions(session_factory, grant.request_id).count("revoking") == 1


class NoOpLeadership:
    def try_acquire(self) -> bool:
        return True

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        pass


class LosableLeadership(NoOpLeadership):
    def __init__(self) -> None:
        self.held = True
        self.acquired = 0

    def try_acquire(self) -> bool:
        self.acquired += 1
        return self.held

    def still_held(self) -> bool:
        return self.held


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def leading_loop(work: LifecycleExpiryWork, clock: Any, *,
                 sweep_interval: timedelta = timedelta(hours=1),
                 leadership: Any = None, **options: Any) -> Iterator[ExpiryLoop]:
    """An expiry loop leading on a thread of its own (past its first sweep); stopped, and
    checked to have stopped, when the block ends."""
    loop = ExpiryLoop(work=work, clock=clock, leadership=leadership or NoOpLeadership(),
                      sweep_interval=sweep_interval, **options)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run_forever, args=(stop,), name="expiry-loop")
    thread.start()
    try:
        wait_until(lambda: loop.last_sweep is not None, 10, "the first sweep")
        yield loop
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and not loop.leading


def revoked_when(sessions: SessionFactory, grant_ids: list[str], timeout: float
                 ) -> datetime:
    """The wall-clock time by which every one of `grant_ids` was seen revoked."""
    wait_until(lambda: {grant_row(sessions, g).state for g in grant_ids} == {"revoked"},
               timeout, "the grants to be revoked")
    return datetime.now(UTC)


def test_the_loop_wakes_at_the_expiry_of_a_grant_made_after_it_went_to_sleep(
        session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter) -> None:
    """The web process makes a grant while the loop sleeps (nothing active, the sweep an
    hour away): the loop finds it by looking at the database, and revokes it at its
    expiry, not at the sweep."""
    work = LifecycleExpiryWork(request_service, session_factory)
    with leading_loop(work, SystemClock(), due_poll_interval=timedelta(seconds=0.5)):
        time.sleep(0.3)  # asleep, knowing of no grant
        # Approved 30 minutes ago, by the lifecycle's clock: it expires in 1.5 s.
        clock.set(datetime.now(UTC) - timedelta(minutes=30) + timedelta(seconds=1.5))
        grant_id = make_active(request_service, entries(catalog, 1)[0], minutes=30)
        expires_at = grant_row(session_factory, grant_id).expires_at
        seen = revoked_when(session_factory, [grant_id], 20)
    assert seen >= expires_at  # not early
    # Within the poll interval and a loaded machine's slack; the sweep would be an hour.
    assert (seen - expires_at).total_seconds() < 5
    assert len(granter.revoke_calls) == 1


def test_a_mass_expiry_is_drained_in_batches_by_one_wake_up(
        session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter) -> None:
    grant_ids = [make_active(request_service, entry, 30, requester)
                 for requester in ("U0ALICE", "U0BOB") for entry in entries(catalog, 10)]
    # All expire at one instant, shortly ahead on the wall clock the loop runs on.
    expiry = datetime.now(UTC) + timedelta(seconds=1.5)
    with session_factory.begin() as session:
        session.execute(sa.update(Grant).values(expires_at=expiry))
    work = LifecycleExpiryWork(request_service, session_factory, batch_size=4)
    batches: list[int] = []
    original = request_service.revoke_due_batch

    def counted(*args: Any, **kwargs: Any) -> Any:
        outcomes = original(*args, **kwargs)
        batches.append(len(outcomes))
        return outcomes

    request_service.revoke_due_batch = counted  # type: ignore[method-assign]
    with leading_loop(work, SystemClock()) as loop:
        clock.set(expiry)  # the lifecycle records the revocations at the expiry
        revoked_when(session_factory, grant_ids, 30)
        assert loop.last_sweep is not None and loop.last_sweep[1].revoked == 0  # not the sweep
    assert sorted(call[2] for call in granter.revoke_calls) == sorted(
        (f"connect-access-{g}",) for g in grant_ids)
    # Batches of 4 until one comes back empty; the start-up sweep found nothing due.
    drained = [size for size in batches if size]
    assert drained == [4, 4, 4, 4, 4]


def test_a_grant_left_for_a_retry_is_finished_by_the_sweep(
        session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter) -> None:
    grant_id = make_active(request_service, entries(catalog, 1)[0], minutes=30)
    work = LifecycleExpiryWork(request_service, session_factory)
    loop = ExpiryLoop(work=work, clock=clock, leadership=NoOpLeadership(),
                      sweep_interval=timedelta(seconds=30))
    clock.advance(timedelta(minutes=31))
    granter.fail_revoke("throttled", transient=True, times=1)
    assert loop.drain_if_due() is True
    assert grant_row(session_factory, grant_id).state == "revoking"
    # Nothing more for the loop's drains: the retry is the sweep's.
    assert loop.drain_if_due() is False

    clock.advance(timedelta(minutes=1))  # past the first backoff
    assert loop.sweep().revoked == 1
    assert grant_row(session_factory, grant_id).state == "revoked"


def test_a_due_grant_the_drain_cannot_take_waits_for_the_sweep_without_spinning(
        session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock) -> None:
    grant_id = make_active(request_service, entries(catalog, 1)[0], minutes=30)
    work = LifecycleExpiryWork(request_service, session_factory)
    loop = ExpiryLoop(work=work, clock=clock, leadership=NoOpLeadership(),
                      sweep_interval=timedelta(seconds=30))
    clock.advance(timedelta(minutes=31))
    taken = request_service.revoke_due_batch
    request_service.revoke_due_batch = lambda *a, **k: []  # type: ignore[method-assign]
    assert loop.drain_if_due() is True  # tried: the grant stayed (its row was busy)
    assert loop.drain_if_due() is False  # and is not drained again and again
    request_service.revoke_due_batch = taken  # type: ignore[method-assign]
    assert loop.sweep().revoked == 1
    assert grant_row(session_factory, grant_id).state == "revoked"


def test_a_failing_drain_is_tried_again_after_the_poll_interval(
        session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock) -> None:
    grant_id = make_active(request_service, entries(catalog, 1)[0], minutes=30)
    work = LifecycleExpiryWork(request_service, session_factory)
    loop = ExpiryLoop(work=work, clock=clock, leadership=NoOpLeadership(),
                      sweep_interval=timedelta(seconds=30),
                      due_poll_interval=timedelta(seconds=2))
    clock.advance(timedelta(minutes=31))
    taken = request_service.revoke_due_batch

    def unreachable(*_: Any, **__: Any) -> Any:
        raise sa.exc.OperationalError("SELECT", {}, Exception("database unreachable"))

    request_service.revoke_due_batch = unreachable  # type: ignore[method-assign]
    assert loop.drain_if_due() is False
    request_service.revoke_due_batch = taken  # type: ignore[method-assign]
    assert loop.drain_if_due() is False  # not at once: no loop hammering the database
    clock.advance(timedelta(seconds=2))
    assert loop.drain_if_due() is True
    assert grant_row(session_factory, grant_id).state == "revoked"


def test_stop_ends_a_sleeping_loop_at_once_and_lost_leadership_ends_leading(
        session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter) -> None:
    make_active(request_service, entries(catalog, 1)[0], minutes=30)  # an hour away
    work = LifecycleExpiryWork(request_service, session_factory)
    started = time.monotonic()
    with leading_loop(work, clock, sweep_interval=timedelta(hours=1),
                      due_poll_interval=timedelta(hours=1)):
        pass  # stopped (SIGTERM's stop event) while it sleeps for an hour
    assert time.monotonic() - started < 5

    leadership = LosableLeadership()
    loop = ExpiryLoop(work=work, clock=clock, leadership=leadership,
                      sweep_interval=timedelta(seconds=1),
                      due_poll_interval=timedelta(seconds=0.1))
    stop = threading.Event()
    thread = threading.Thread(target=loop.run_forever, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: loop.leading, 10, "the loop to lead")
        leadership.held = False  # another process leads now
        wait_until(lambda: not loop.leading, 10, "the loop to stop leading")
        clock.advance(timedelta(minutes=31))
        time.sleep(0.5)
        assert granter.revoke_calls == []  # a process that does not lead revokes nothing
        assert leadership.acquired >= 2  # it stands by, asking again
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


POSTGRES_ONLY = pytest.mark.parametrize(
    "db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)


@POSTGRES_ONLY
def test_postgres_leadership_has_one_holder_at_a_time(database_url: str) -> None:
    engines = [make_engine(database_url), make_engine(database_url)]
    try:
        leader, standby = (leadership_for(e) for e in engines)
        assert isinstance(leader, PostgresLeadership)
        assert leader.try_acquire() is True
        assert leader.try_acquire() is True  # asking again does not stack a second hold
        assert standby.try_acquire() is False
        assert leader.still_held() is True
        leader.release()
        assert leader.still_held() is False
        assert standby.try_acquire() is True
        standby.release()
    finally:
        for engine in engines:
            engine.dispose()


def test_a_second_sqlite_scheduler_is_refused(tmp_path: Path) -> None:
    database = tmp_path / "bot.db"
    first = SqliteLeadership(database)
    assert first.try_acquire() is True
    with pytest.raises(LeadershipError, match="another scheduler is already running"):
        SqliteLeadership(database).try_acquire()
    first.release()
    again = SqliteLeadership(database)
    assert again.try_acquire() is True
    again.release()


def test_in_memory_sqlite_cannot_run_a_scheduler() -> None:
    engine = make_engine("sqlite://")
    try:
        with pytest.raises(LeadershipError, match="file or server database"):
            leadership_for(engine)
    finally:
        engine.dispose()


def test_requests_still_pending_are_untouched_by_revocation(
        work: LifecycleExpiryWork, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, session_factory: SessionFactory) -> None:
    request = request_service.submit(requester="U0BOB", entry_id=entries(catalog, 1)[0],
                                     reason="ticket CX-2", duration=timedelta(hours=1))
    clock.advance(timedelta(hours=2))
    assert work.revoke_overdue(clock.now()) == 0
    with session_factory() as session:
        assert session.get_one(AccessRequest, request.id).state == "pending"


def test_the_runtime_compiles_real_policies_and_logs_notifications(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    runtime = build_runtime(Settings(database_url=database_url, aws_region="us-east-1"))
    try:
        start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
        plan = runtime.plan_builder(GrantContext(
            grant_id="abc123def456", entry_id="home/list-instance",
            principal_arn="arn:aws:iam::123456789012:role/alice", instance_arn=None,
            start=start, expires_at=start + timedelta(hours=1), inline_usage=0))
        assert plan.kind == "inline"
        assert [p.name for p in plan.policies] == ["connect-access-abc123def456"]
        assert "2026-11-02T10:00:00Z" in json.dumps(plan.policies[0].document)
        assert runtime.approvers.members(["U0LEAD01", "S0LEADS"]) == frozenset({"U0LEAD01"})
        with caplog.at_level(logging.INFO, logger="bot.runtime"):
            runtime.notifier.notify(Notification(event="expiring_soon", request_id=7,
                                                 detail={"requester": "U0ALICE"}))
        assert "notification expiring_soon for request 7" in caplog.text
    finally:
        runtime.close()


def test_the_leader_reconciles_when_it_starts_and_then_every_interval_until_stopped(
        engine: sa.Engine, session_factory: SessionFactory, request_service: RequestService,
        clock: FakeClock) -> None:
    runs: list[float] = []
    ran = threading.Condition()

    def reconcile(now: datetime) -> int:
        with ran:
            runs.append(time.monotonic())
            ran.notify_all()
        if len(runs) == 2:
            raise RuntimeError("IAM unreachable")  # one failing run stops nothing
        return 0

    work = LifecycleExpiryWork(request_service, session_factory)
    with leading_loop(work, clock, reconcile=reconcile,
                      reconcile_interval=timedelta(hours=1)), ran:
        assert ran.wait_for(lambda: len(runs) == 1, timeout=10)  # at start, not after 1h
    runs.clear()
    with leading_loop(work, clock, reconcile=reconcile,
                      reconcile_interval=timedelta(seconds=0.3)), ran:
        assert ran.wait_for(lambda: len(runs) >= 3, timeout=10)
    stopped_with = len(runs)
    time.sleep(0.6)
    assert len(runs) == stopped_with  # stopping ends the loop
