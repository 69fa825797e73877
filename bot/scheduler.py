"""The expiry scheduler: revoke on time, catch up after downtime, one leader at a time.

It runs in its own process (`connect-access scheduler`), never inside web workers:
- one APScheduler DateTrigger job per active grant at its `expires_at`, kept in a
  SQLAlchemy job store in the application database, with `misfire_grace_time=None` (the
  default 1 s grace silently drops a revoke whose time passed while we were down) and
  `coalesce=True`;
- a sweep every `sweep_interval`, run by the leader's own loop rather than stored as a job,
  that revokes whatever is overdue, times out pending requests, retries irrevocable grants,
  sends reminders, and brings the job store in line with the active grants (jobs for grants
  the web process created since the last sweep, moved for extended ones, dropped for
  revoked ones). The database, not the job store, is the truth: a lost job only delays a
  revoke to the next sweep, and a job for a grant that is no longer due does nothing.

When thousands of grants expire together, one fired job's drain revokes them all, so their
other jobs have nothing left to do; dispatching them would cost APScheduler about as much CPU
per job (load, unpickle, submit, run, delete) as revoking a grant, on the cores IAM calls
need. So the job store hands out due jobs in small chunks, a job's drain pauses job
processing while it runs, and every drain batch deletes the jobs of the grants it handled in
one statement: APScheduler never sees them.

Only the leader (bot/leader.py) runs APScheduler, so two schedulers never share a job store.

The leader also settles requests a crashed process left `approved` or `granting` (each
sweep), and runs reconcile once when it starts leading and then every
`timings.reconcile_interval`, on a thread of its own so a long IAM listing never holds up
a sweep.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.util import datetime_to_utc_timestamp
from sqlalchemy import Engine, select, text

from bot.leader import Leadership, wait_for_leadership
from bot.ports import Clock

log = logging.getLogger(__name__)

JOB_TABLE = "apscheduler_jobs"
# Due jobs APScheduler takes per wakeup (it loops at once for the next chunk). Small, so a
# mass expiry's first job has paused job processing before more than a chunk is dispatched.
DUE_JOBS_PER_WAKEUP = 50


class DrainObserver(Protocol):
    """What the scheduler wants to hear from the work's drains."""

    def draining(self) -> contextlib.AbstractContextManager[None]:
        """Held by a job from before it waits for this process's drain until the drain
        ends: a drain takes every grant that is due, and a job's drain every grant that
        comes due while it runs, so the other due jobs have nothing to add meanwhile."""
        ...

    def handled(self, grant_ids: Collection[str]) -> None:
        """One drain batch handled these grants (revoked, or left for the sweep to retry):
        their jobs have nothing left to do."""
        ...


class ExpiryWork(Protocol):
    """What the scheduler asks of the request lifecycle; every method is safe to call from
    two processes at once (rows are claimed, states are checked)."""

    def revoke_grant(self, grant_id: str, *, reason: str) -> bool:
        """Revoke one grant if it is still active and due; True when this call revoked it."""
        ...

    def revoke_overdue(self, now: datetime) -> int: ...

    def expire_pending(self, now: datetime) -> int: ...

    def retry_irrevocable(self, now: datetime) -> int: ...

    def send_reminders(self, now: datetime) -> int: ...

    def recover_stuck(self, now: datetime) -> int:
        """Settle requests left approved or granting by a process that stopped."""
        ...

    def active_expiries(self) -> list[tuple[str, datetime]]:
        """(grant id, expires_at) of every active grant."""
        ...

    def observe_drains(self, observer: DrainObserver | None) -> None:
        """Report drains to `observer` from now on (None: stop)."""
        ...


@dataclass(frozen=True)
class SweepResult:
    revoked: int
    timed_out: int
    retried: int
    reminded: int
    scheduled: int
    recovered: int = 0


def revoke_expired_grant(grant_id: str) -> None:
    """What a grant's stored job names. APScheduler's job store pickles a job as a
    reference to an importable function plus its arguments, so this is the reference; the
    job never runs it as it is: ExpiryJobStore hands every due job to its scheduler's work
    (RevokeExpiredGrant), so a job revokes its own grant with no module-level state."""
    raise RuntimeError(
        f"the revoke job of grant {grant_id} was loaded by a store without expiry work; "
        "only ExpiryScheduler's ExpiryJobStore runs these jobs"
    )


@dataclass(frozen=True)
class RevokeExpiredGrant:
    """A grant's job as it runs: revoke that grant, if it is still active and due."""

    work: ExpiryWork

    def __call__(self, grant_id: str) -> None:
        self.work.revoke_grant(grant_id, reason="expired")


REVOKE_JOB_REF = f"{__name__}:{revoke_expired_grant.__qualname__}"


JOB_PREFIX = "revoke-"


def job_id_for(grant_id: str) -> str:
    return f"{JOB_PREFIX}{grant_id}"


class ExpiryJobStore(SQLAlchemyJobStore):  # type: ignore[misc]  # APScheduler is untyped
    """APScheduler's SQLAlchemy job store (same table, same pickled jobs) with three
    changes: a due revoke job is handed `work` to revoke its grant with (the stored job
    holds only the reference revoke_expired_grant and the grant id); for mass expiries, due
    jobs come `due_per_wakeup` at a time, and jobs can be deleted in bulk (behind
    APScheduler's back: see _JobScheduler)."""

    def __init__(self, *, engine: Engine, work: ExpiryWork, tablename: str = JOB_TABLE,
                 due_per_wakeup: int = DUE_JOBS_PER_WAKEUP) -> None:
        super().__init__(engine=engine, tablename=tablename)
        self.due_per_wakeup = due_per_wakeup
        self._revoke = RevokeExpiredGrant(work)

    def get_due_jobs(self, now: datetime) -> list[Any]:
        jobs = self.jobs_t.c
        due = (select(jobs.id).where(jobs.next_run_time <= datetime_to_utc_timestamp(now))
               .order_by(jobs.next_run_time, jobs.id).limit(self.due_per_wakeup))
        result: list[Any] = self._get_jobs(jobs.id.in_(due))
        for job in result:
            # Only what runs changes: the job keeps its stored reference (func_ref), so
            # APScheduler pickles it as before if it stores it again.
            if job.func_ref == REVOKE_JOB_REF:
                job.func = self._revoke
        return result

    def remove_jobs(self, job_ids: Collection[str]) -> int:
        """Delete these jobs (missing ones are skipped); returns how many were there."""
        ids, removed = list(job_ids), 0
        with self.engine.begin() as connection:
            for start in range(0, len(ids), 500):  # within every database's parameter limit
                removed += connection.execute(self.jobs_t.delete().where(
                    self.jobs_t.c.id.in_(ids[start:start + 500]))).rowcount
        return removed

    def ensure_table(self) -> None:
        self.jobs_t.create(self.engine, checkfirst=True)


class _JobScheduler(BackgroundScheduler):  # type: ignore[misc]  # APScheduler is untyped
    def remove_job(self, job_id: str, jobstore: str | None = None) -> None:
        # APScheduler removes every job it ran; a drain may have deleted it meanwhile. Or
        # we are shutting down, and once stopped APScheduler looks for jobs only among
        # those not stored yet: a job left stored finds nothing to do when it runs again.
        with contextlib.suppress(JobLookupError):
            super().remove_job(job_id, jobstore)


class ExpiryScheduler:
    def __init__(
        self,
        *,
        engine: Engine,
        work: ExpiryWork,
        clock: Clock,
        leadership: Leadership,
        sweep_interval: timedelta,
        job_workers: int = 10,
        due_jobs_per_wakeup: int = DUE_JOBS_PER_WAKEUP,
        reconcile: Callable[[datetime], int] | None = None,
        reconcile_interval: timedelta = timedelta(minutes=15),
    ) -> None:
        self.engine = engine
        self.work = work
        self.clock = clock
        self.leadership = leadership
        self.sweep_interval = sweep_interval
        self.job_workers = job_workers
        self.due_jobs_per_wakeup = due_jobs_per_wakeup
        self._scheduler: _JobScheduler | None = None
        self._store: ExpiryJobStore | None = None
        self._sweep_lock = threading.Lock()
        self._pause_lock = threading.Lock()
        self._drain_holds = 0
        self._paused_for_drain = False
        self.reconcile = reconcile
        self.reconcile_interval = reconcile_interval
        self._reconcile_stop = threading.Event()
        self._reconcile_thread: threading.Thread | None = None
        # When the last sweep ran and what it did (read by bot.heartbeat).
        self.last_sweep: tuple[datetime, SweepResult] | None = None

    @property
    def leading(self) -> bool:
        """True while this process leads (and so runs the jobs and the sweep)."""
        return self._scheduler is not None

    # --- drains (bot.scheduler.DrainObserver) --------------------------------------------

    @contextlib.contextmanager
    def draining(self) -> Iterator[None]:
        # Job processing pauses while any job waits for or runs a drain: the other due jobs
        # wait (their grants are the drain's), and when it ends only the jobs of grants it
        # did not handle are left to run.
        scheduler = self._scheduler
        with self._pause_lock:
            self._drain_holds += 1
            if scheduler is not None and scheduler.state == STATE_RUNNING:
                scheduler.pause()
                self._paused_for_drain = True
        try:
            yield
        finally:
            with self._pause_lock:
                self._drain_holds -= 1
                if self._drain_holds == 0 and self._paused_for_drain and scheduler is not None:
                    self._paused_for_drain = False
                    # Shut down meanwhile (stop() waits for the job running this drain).
                    with contextlib.suppress(SchedulerNotRunningError):
                        scheduler.resume()

    def handled(self, grant_ids: Collection[str]) -> None:
        store = self._store
        if store is None or not grant_ids:
            return
        try:
            store.remove_jobs([job_id_for(grant_id) for grant_id in grant_ids])
        except Exception:
            # Only costs work: APScheduler runs those jobs, which find nothing to do.
            log.exception("removing the jobs of %d handled grant(s) failed", len(grant_ids))

    # --- the sweep -----------------------------------------------------------------------

    def sweep(self) -> SweepResult:
        # One sweep at a time in this process; other processes are kept out by leadership
        # and, underneath, by row claims in the lifecycle.
        with self._sweep_lock:
            now = self.clock.now()
            revoked = self._safely(self.work.revoke_overdue, now)
            timed_out = self._safely(self.work.expire_pending, now)
            retried = self._safely(self.work.retry_irrevocable, now)
            reminded = self._safely(self.work.send_reminders, now)
            recovered = self._safely(self.work.recover_stuck, now)
            try:
                scheduled = self._schedule_missing_jobs()
            except Exception:
                # Not fatal: the sweep itself revokes overdue grants without jobs.
                log.exception("scheduling revoke jobs failed; the next sweep tries again")
                scheduled = 0
            result = SweepResult(revoked, timed_out, retried, reminded, scheduled, recovered)
            self.last_sweep = (now, result)
            if any((revoked, timed_out, retried, reminded, scheduled, recovered)):
                log.info("sweep: %s", result)
            return result

    @staticmethod
    def _safely(step: Callable[[datetime], int], now: datetime) -> int:
        # One failing step (say, IAM throttling) must not stop the others.
        try:
            return step(now)
        except Exception:
            log.exception("sweep step %s failed; it runs again next sweep", step.__name__)
            return 0

    def _schedule_missing_jobs(self) -> int:
        """Make the job store match the database: a job for every active grant at its
        current expiry (new grants from the web process, extended ones), none for grants
        that are no longer active. Returns how many jobs were added or moved."""
        scheduler = self._scheduler
        if scheduler is None:
            return 0
        # Read ids and run times straight from the table: get_jobs() would unpickle every
        # job on every sweep, which is slow with thousands of grants.
        with self.engine.connect() as connection:
            stored = {
                str(job_id): float(run_at) if run_at is not None else None
                for job_id, run_at in connection.execute(
                    text(f"SELECT id, next_run_time FROM {JOB_TABLE}")
                )
            }
        wanted = {job_id_for(grant_id): (grant_id, expires_at)
                  for grant_id, expires_at in self.work.active_expiries()}
        changed = 0
        for job_id, (grant_id, expires_at) in wanted.items():
            run_at = stored.get(job_id)
            if run_at is not None and abs(run_at - expires_at.timestamp()) < 1:
                continue
            scheduler.add_job(
                revoke_expired_grant,
                trigger="date",
                run_date=expires_at,
                args=[grant_id],
                id=job_id,
                replace_existing=True,
            )
            changed += 1
        stale = [job_id for job_id in stored.keys() - wanted.keys()
                 if job_id.startswith(JOB_PREFIX)]
        if stale and self._store is not None:
            # One statement, not a remove_job (a transaction and a log line) per job.
            self._store.remove_jobs(stale)
        return changed

    # --- running -------------------------------------------------------------------------

    def start(self) -> None:
        """Catch up first (revoke everything overdue), then schedule the rest."""
        store = ExpiryJobStore(
            engine=self.engine, work=self.work, due_per_wakeup=self.due_jobs_per_wakeup
        )
        store.ensure_table()
        # From here on every drain, the catch-up included, deletes the jobs of the grants it
        # handles: after downtime, thousands of due jobs would otherwise run one by one.
        self._store = store
        self.work.observe_drains(self)
        caught_up = self._safely(self.work.revoke_overdue, self.clock.now())
        if caught_up:
            log.info("caught up on start: revoked %d overdue grant(s)", caught_up)
        scheduler = _JobScheduler(
            jobstores={"default": store},
            executors={"default": ThreadPoolExecutor(max_workers=self.job_workers)},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone="UTC",
        )
        self._scheduler = scheduler
        # Paused while the first sweep fills the job store, so thousands of add_job calls
        # do not each wake the scheduler thread; due jobs run as soon as it resumes.
        scheduler.start(paused=True)
        self.sweep()
        scheduler.resume()
        if self.reconcile is not None:
            self._reconcile_stop.clear()
            self._reconcile_thread = threading.Thread(
                target=self._reconcile_loop, name="scheduled-reconcile", daemon=True)
            self._reconcile_thread.start()

    def _reconcile_loop(self) -> None:
        """Reconcile now, then every reconcile_interval, until stop()."""
        assert self.reconcile is not None
        while True:
            try:
                self.reconcile(self.clock.now())
            except Exception:
                log.exception("scheduled reconcile failed; it runs again in %s",
                              self.reconcile_interval)
            if self._reconcile_stop.wait(self.reconcile_interval.total_seconds()):
                return

    def stop(self) -> None:
        self._reconcile_stop.set()
        if self._reconcile_thread is not None:
            # A run in flight finishes (its repairs are each one IAM call and one commit).
            self._reconcile_thread.join()
            self._reconcile_thread = None
        if self._scheduler is not None:
            # Let a revoke in flight finish: cut off halfway it would wait out its claim
            # lease before anyone retried it.
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self.work.observe_drains(None)
        self._store = None

    def run_forever(self, stop: threading.Event) -> None:
        """Wait to lead, then lead until `stop` is set or leadership is lost."""
        poll = max(self.sweep_interval.total_seconds() / 3, 0.2)
        while not stop.is_set():
            # Said only by a standby: a process that leads at once starts quietly.
            if not self.leadership.try_acquire():
                log.info("waiting to become the scheduler leader (another scheduler leads)")
                if not wait_for_leadership(self.leadership, stop, poll):
                    return
            log.info("this process is now the scheduler leader")
            try:
                self.start()
                next_sweep = self.clock.now() + self.sweep_interval
                while not stop.wait(poll):
                    if not self.leadership.still_held():
                        log.error("lost scheduler leadership; stopping jobs and re-electing")
                        break
                    if self.clock.now() >= next_sweep:
                        self.sweep()
                        next_sweep = self.clock.now() + self.sweep_interval
            finally:
                self.stop()
                self.leadership.release()
