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

Only the leader (bot/leader.py) runs APScheduler, so two schedulers never share a job store.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine, text

from bot.leader import Leadership, wait_for_leadership
from bot.ports import Clock

log = logging.getLogger(__name__)

JOB_TABLE = "apscheduler_jobs"


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

    def active_expiries(self) -> list[tuple[str, datetime]]:
        """(grant id, expires_at) of every active grant."""
        ...


@dataclass(frozen=True)
class SweepResult:
    revoked: int
    timed_out: int
    retried: int
    reminded: int
    scheduled: int


# APScheduler's job store persists jobs as an importable function plus arguments, so the
# job must be a module-level function taking ids. It finds the process's work through this
# slot, set once by ExpiryScheduler.start().
_current_work: ExpiryWork | None = None


def revoke_grant_job(grant_id: str) -> None:
    if _current_work is None:
        raise RuntimeError("revoke job ran outside a started ExpiryScheduler")
    _current_work.revoke_grant(grant_id, reason="expired")


JOB_PREFIX = "revoke-"


def job_id_for(grant_id: str) -> str:
    return f"{JOB_PREFIX}{grant_id}"


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
    ) -> None:
        self.engine = engine
        self.work = work
        self.clock = clock
        self.leadership = leadership
        self.sweep_interval = sweep_interval
        self.job_workers = job_workers
        self._scheduler: BackgroundScheduler | None = None
        self._sweep_lock = threading.Lock()

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
            try:
                scheduled = self._schedule_missing_jobs()
            except Exception:
                # Not fatal: the sweep itself revokes overdue grants without jobs.
                log.exception("scheduling revoke jobs failed; the next sweep tries again")
                scheduled = 0
            result = SweepResult(revoked, timed_out, retried, reminded, scheduled)
            if any((revoked, timed_out, retried, reminded, scheduled)):
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
                revoke_grant_job,
                trigger="date",
                run_date=expires_at,
                args=[grant_id],
                id=job_id,
                replace_existing=True,
            )
            changed += 1
        for job_id in stored.keys() - wanted.keys():
            if job_id.startswith(JOB_PREFIX):
                with contextlib.suppress(JobLookupError):
                    scheduler.remove_job(job_id)
        return changed

    # --- running -------------------------------------------------------------------------

    def start(self) -> None:
        """Catch up first (revoke everything overdue), then schedule the rest."""
        global _current_work
        _current_work = self.work
        caught_up = self._safely(self.work.revoke_overdue, self.clock.now())
        if caught_up:
            log.info("caught up on start: revoked %d overdue grant(s)", caught_up)
        scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine, tablename=JOB_TABLE)},
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

    def stop(self) -> None:
        global _current_work
        if self._scheduler is not None:
            # Let a revoke in flight finish: cut off halfway it would wait out its claim
            # lease before anyone retried it.
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        _current_work = None

    def run_forever(self, stop: threading.Event) -> None:
        """Wait to lead, then lead until `stop` is set or leadership is lost."""
        poll = max(self.sweep_interval.total_seconds() / 3, 0.2)
        while not stop.is_set():
            log.info("waiting to become the scheduler leader")
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
