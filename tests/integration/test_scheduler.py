"""The scheduler's work in-process, on SQLite and PostgreSQL: overdue grants revoked once,
irrevocable ones retried on the longer period, pending requests timed out, reminders sent
once, two workers racing for the same grants, the job store kept in step with the grants,
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
from bot.ports import Notification
from bot.runtime import build_runtime
from bot.scheduler import (
    JOB_TABLE,
    ExpiryJobStore,
    ExpiryScheduler,
    RevokeExpiredGrant,
    job_id_for,
    revoke_expired_grant,
)
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
    assert [g for g, _ in work.active_expiries()] == [later]


def test_scheduled_job_does_not_revoke_a_grant_that_is_not_due(
        work: LifecycleExpiryWork, request_service: RequestService, catalog: Catalog,
        clock: FakeClock, session_factory: SessionFactory) -> None:
    grant_id = make_active(request_service, entries(catalog, 1)[0], minutes=30)
    # A job left at an old expiry (the grant was extended meanwhile) finds nothing to do.
    assert work.revoke_grant(grant_id, reason="expired") is False
    clock.advance(timedelta(minutes=30))
    assert work.revoke_grant(grant_id, reason="expired") is True
    assert work.revoke_grant(grant_id, reason="expired") is False
    assert grant_row(session_factory, grant_id).state == "revoked"


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


@contextlib.contextmanager
def running_scheduler(engine: sa.Engine, work: LifecycleExpiryWork, clock: FakeClock, *,
                      sweep_interval: timedelta = timedelta(hours=1), **options: Any
                      ) -> Iterator[ExpiryScheduler]:
    """A started scheduler that always leads; stopped when the block ends."""
    scheduler = ExpiryScheduler(engine=engine, work=work, clock=clock,
                                leadership=NoOpLeadership(), sweep_interval=sweep_interval,
                                **options)
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.stop()


def stored_jobs(engine: sa.Engine) -> dict[str, float]:
    with engine.connect() as connection:
        return {str(job_id): float(run_at) for job_id, run_at in connection.execute(
            sa.text(f"SELECT id, next_run_time FROM {JOB_TABLE}"))}


def test_the_sweep_keeps_one_job_per_active_grant_at_its_expiry(
        engine: sa.Engine, session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock) -> None:
    # APScheduler runs on the wall clock, so the lifecycle's clock starts at the real now.
    clock.set(datetime.now(UTC))
    first, second = entries(catalog, 2)
    existing = make_active(request_service, first, minutes=60)
    work = LifecycleExpiryWork(request_service, session_factory)
    with running_scheduler(engine, work, clock, sweep_interval=timedelta(seconds=1)) as scheduler:
        jobs = stored_jobs(engine)
        assert jobs == {job_id_for(existing): pytest.approx(
            grant_row(session_factory, existing).expires_at.timestamp())}

        created_later = make_active(request_service, second, minutes=90)  # "the web process"
        assert scheduler.sweep().scheduled == 1
        assert set(stored_jobs(engine)) == {job_id_for(existing), job_id_for(created_later)}

        request_service.revoke(grant_row(session_factory, existing).request_id, "U0ALICE",
                               "done")
        assert scheduler.sweep().scheduled == 0
        assert set(stored_jobs(engine)) == {job_id_for(created_later)}


def audit_event_count(sessions: SessionFactory) -> int:
    with sessions() as session:
        return len(session.execute(select(AuditEvent.seq)).all())


def test_a_drain_removes_the_jobs_of_the_grants_it_revoked(
        engine: sa.Engine, session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter) -> None:
    clock.set(datetime.now(UTC))  # APScheduler runs on the wall clock
    first, second, third = entries(catalog, 3)
    due = [make_active(request_service, entry, minutes=30) for entry in (first, second)]
    later = make_active(request_service, third, minutes=90)
    work = LifecycleExpiryWork(request_service, session_factory)
    with running_scheduler(engine, work, clock):
        assert set(stored_jobs(engine)) == {job_id_for(g) for g in (*due, later)}
        clock.advance(timedelta(minutes=31))
        # The drain itself, not the sweep's upkeep of the job store, deletes them.
        assert work.revoke_overdue(clock.now()) == 2
        assert set(stored_jobs(engine)) == {job_id_for(later)}
        assert {grant_row(session_factory, g).state for g in due} == {"revoked"}

        # A job whose grant a drain already revoked (it fired before the drain deleted
        # it) does nothing: no IAM call, no audit event, here or in another process.
        revokes, events = len(granter.revoke_calls), audit_event_count(session_factory)
        RevokeExpiredGrant(work)(due[0])  # the job as ExpiryJobStore hands it out
        assert LifecycleExpiryWork(request_service, session_factory).revoke_grant(
            due[1], reason="expired") is False
        assert len(granter.revoke_calls) == revokes
        assert audit_event_count(session_factory) == events
        assert grant_row(session_factory, later).state == "active"


def test_a_grant_left_for_a_retry_loses_its_job_and_the_sweep_finishes_it(
        engine: sa.Engine, session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter) -> None:
    clock.set(datetime.now(UTC))
    grant_id = make_active(request_service, entries(catalog, 1)[0], minutes=30)
    work = LifecycleExpiryWork(request_service, session_factory)
    with running_scheduler(engine, work, clock) as scheduler:
        clock.advance(timedelta(minutes=31))
        granter.fail_revoke("throttled", transient=True, times=1)
        assert work.revoke_overdue(clock.now()) == 0
        assert grant_row(session_factory, grant_id).state == "revoking"
        assert stored_jobs(engine) == {}  # retries are the sweep's, not a job's

        clock.advance(timedelta(minutes=1))  # past the first backoff
        assert scheduler.sweep().revoked == 1
        assert grant_row(session_factory, grant_id).state == "revoked"
        assert stored_jobs(engine) == {}


class CountingWork(LifecycleExpiryWork):
    """Counts the revoke jobs APScheduler runs."""

    def __init__(self, service: RequestService, sessions: SessionFactory) -> None:
        super().__init__(service, sessions)
        self.job_runs = 0
        self._count = threading.Lock()

    def revoke_grant(self, grant_id: str, *, reason: str) -> bool:
        with self._count:
            self.job_runs += 1
        return super().revoke_grant(grant_id, reason=reason)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_mass_expiry_runs_one_drain_and_not_a_job_per_grant(
        engine: sa.Engine, session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter) -> None:
    clock.set(datetime.now(UTC))
    grant_ids = [make_active(request_service, entry, 30, requester)
                 for requester in ("U0ALICE", "U0BOB") for entry in entries(catalog, 10)]
    # All expire at one instant, shortly ahead on the wall clock APScheduler runs on.
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    with session_factory.begin() as session:
        session.execute(sa.update(Grant).values(expires_at=expiry))
    work = CountingWork(request_service, session_factory)
    with running_scheduler(engine, work, clock, job_workers=2,
                           due_jobs_per_wakeup=2):
        assert len(stored_jobs(engine)) == 20
        clock.set(expiry + timedelta(seconds=1))  # the lifecycle sees them due from now on
        wait_until(lambda: {grant_row(session_factory, g).state for g in grant_ids}
                   == {"revoked"} and not stored_jobs(engine), 60,
                   "every grant to be revoked and every job to be gone")
        assert sorted(call[2] for call in granter.revoke_calls) == sorted(
            (f"connect-access-{g}",) for g in grant_ids)
        # The first job's drain took every grant; APScheduler ran the jobs it had fetched
        # (2 per wakeup) and then none: the drain deleted the other jobs first.
        assert work.job_runs < len(grant_ids) // 2


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
    with running_scheduler(engine, work, clock, reconcile=reconcile,
                           reconcile_interval=timedelta(hours=1)), ran:
        assert ran.wait_for(lambda: len(runs) == 1, timeout=10)  # at start, not after 1h
    runs.clear()
    with running_scheduler(engine, work, clock, reconcile=reconcile,
                           reconcile_interval=timedelta(seconds=0.3)), ran:
        assert ran.wait_for(lambda: len(runs) >= 3, timeout=10)
    stopped_with = len(runs)
    time.sleep(0.6)
    assert len(runs) == stopped_with  # stop() ends the loop


def test_a_due_job_comes_from_the_store_bound_to_the_work_and_revokes_only_its_grant(
        engine: sa.Engine, session_factory: SessionFactory, catalog: Catalog,
        request_service: RequestService, clock: FakeClock, granter: InMemoryGranter) -> None:
    clock.set(datetime.now(UTC))
    first, second = entries(catalog, 2)
    mine = make_active(request_service, first, minutes=30)
    other = make_active(request_service, second, minutes=90)
    work = LifecycleExpiryWork(request_service, session_factory)
    with running_scheduler(engine, work, clock):  # stores both jobs, due in real minutes
        assert set(stored_jobs(engine)) == {job_id_for(mine), job_id_for(other)}
    # A second store over the same table, as a restarted leader builds it.
    store = ExpiryJobStore(engine=engine, work=work)
    store.start(None, "default")
    due = store.get_due_jobs(datetime.now(UTC) + timedelta(minutes=31))
    assert [j.id for j in due] == [job_id_for(mine)]
    job = due[0]
    assert job.func_ref == "bot.scheduler:revoke_expired_grant"  # what stays pickled
    assert job.args == (mine,)
    clock.advance(timedelta(minutes=31))
    revokes = len(granter.revoke_calls)

    job.func(*job.args, **job.kwargs)  # as APScheduler's executor runs it

    assert len(granter.revoke_calls) == revokes + 1
    assert grant_row(session_factory, mine).state == "revoked"
    assert grant_row(session_factory, other).state == "active"  # not due: untouched
    with pytest.raises(RuntimeError, match="without expiry work"):
        revoke_expired_grant(other)  # the bare reference does nothing on its own
    assert grant_row(session_factory, other).state == "active"
