"""The expiry scheduler: revoke on time, catch up after downtime, one leader at a time.

It runs in its own process (`connect-access scheduler`), never inside web workers:
- one APScheduler DateTrigger job per active grant at its `expires_at`, kept in a
  SQLAlchemy job store in the application database, with `misfire_grace_time=None` (the
  default 1 s grace silently drops a revoke whose time passed while we were down) and
  `coalesce=True`;
- a sweep every `sweep_interval`, run by the leader's own loop rather than stored as a job,
  that revokes whatever is overdue, times out pending requests, retries irrevocable grants,
  sends reminders, and adds jobs for grants the web process created since the last sweep.
  The database, not the job store, is the truth: a lost job only delays a revoke to the
  next sweep.

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

from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

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


def job_id_for(grant_id: str) -> str:
    return f"revoke-{grant_id}"


class ExpiryScheduler:
    def __init__(
        self,
        *,
        engine: Engine,
        work: ExpiryWork,
        clock: Clock,
        leadership: Leadership,
        sweep_interval: timedelta,
    ) -> None:
        self.engine = engine
        self.work = work
        self.clock = clock
        self.leadership = leadership
        self.sweep_interval = sweep_interval
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
            scheduled = self._schedule_missing_jobs()
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
        if self._scheduler is None:
            return 0
        existing = {job.id for job in self._scheduler.get_jobs()}
        added = 0
        for grant_id, expires_at in self.work.active_expiries():
            if job_id_for(grant_id) not in existing:
                self._scheduler.add_job(
                    revoke_grant_job,
                    trigger="date",
                    run_date=expires_at,
                    args=[grant_id],
                    id=job_id_for(grant_id),
                    replace_existing=True,
                )
                added += 1
        return added

    def forget(self, grant_id: str) -> None:
        if self._scheduler is not None:
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(job_id_for(grant_id))

    # --- running -------------------------------------------------------------------------

    def start(self) -> None:
        """Catch up first (revoke everything overdue), then schedule the rest."""
        global _current_work
        _current_work = self.work
        self._safely(self.work.revoke_overdue, self.clock.now())
        scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine, tablename=JOB_TABLE)},
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
            timezone="UTC",
        )
        self._scheduler = scheduler
        scheduler.start()
        self.sweep()

    def stop(self) -> None:
        global _current_work
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        _current_work = None

    def run_forever(self, stop: threading.Event) -> None:
        """Wait to lead, then lead until `stop` is set or leadership is lost."""
        poll = max(self.sweep_interval.total_seconds() / 3, 0.2)
        while not stop.is_set():
            if not wait_for_leadership(self.leadership, stop, poll):
                return
            log.info("this process is now the scheduler leader")
            self.start()
            try:
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
