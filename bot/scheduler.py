"""The expiry loop: revoke on time, catch up after downtime, one leader at a time.

It runs in its own process (`connect-access scheduler`), never inside web workers. The
leader (bot/leader.py) repeats three things:

- drain: once the earliest active grant's expiry has passed, revoke everything due, in
  batches (bot.expiry.LifecycleExpiryWork over RequestService.revoke_due_batch);
- sweep, every `sweep_interval`: revoke whatever is overdue or due for a retry, time out
  pending requests, retry irrevocable grants, send reminders, settle requests a crashed
  process left `approved` or `granting`;
- sleep until the earliest expiry, the next sweep or the next look at the database,
  whichever comes first (`sleep_until_next_due`). The look, every `due_poll_interval`
  (one indexed query for the earliest expiry), is how the loop finds grants the web process
  made, or extended, after it went to sleep: it learns of expiries only from the database.

The database is the only schedule. The loop keeps nothing per grant, so there is nothing
to keep in step with the grants and nothing to lose when the process dies: a new leader
starts by draining everything overdue. A grant that is due but cannot be taken (its
request row locked by another process, say) is left to the next sweep rather than drained
again at once.

Only the leader drains and sweeps; standbys wait for leadership. Underneath, the
lifecycle's row claims make each revocation happen once even if two processes drained at
the same moment.

The leader also runs reconcile once when it starts leading and then every
`timings.reconcile_interval`: an APScheduler interval job on its own thread, so a long IAM
listing never holds up expiry. (Expiry itself is not an APScheduler job per grant: such a
job would only say "drain now", which the loop's own sleep already does, and keeping jobs
in step with grants made and extended by other processes was most of the old code.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from bot.leader import Leadership, wait_for_leadership
from bot.ports import Clock

log = logging.getLogger(__name__)

# How often a sleeping leader looks for expiries it does not know of yet (grants made or
# extended by another process). One indexed query each time; also the longest a grant
# that expires sooner than this after it was made waits past its expiry.
DUE_POLL_INTERVAL = timedelta(seconds=1)
# Event.wait can return a hair before its time; never spin on a remaining microsecond.
_SHORTEST_SLEEP = 0.01


class ExpiryWork(Protocol):
    """What the loop asks of the request lifecycle; every method is safe to call from two
    processes at once (rows are claimed, states are checked)."""

    def revoke_overdue(self, now: datetime) -> int:
        """Revoke every grant due at `now` (expired, or its retry due); how many were."""
        ...

    def expire_pending(self, now: datetime) -> int: ...

    def retry_irrevocable(self, now: datetime) -> int: ...

    def send_reminders(self, now: datetime) -> int: ...

    def recover_stuck(self, now: datetime) -> int:
        """Settle requests left approved or granting by a process that stopped."""
        ...

    def next_expiry(self, after: datetime | None = None) -> datetime | None:
        """The earliest expiry of an active grant, later than `after` when given (None:
        no such grant)."""
        ...


@dataclass(frozen=True)
class SweepResult:
    revoked: int
    timed_out: int
    retried: int
    reminded: int
    recovered: int = 0


class ExpiryLoop:
    """The scheduler process's main loop (see the module docstring)."""

    def __init__(
        self,
        *,
        work: ExpiryWork,
        clock: Clock,
        leadership: Leadership,
        sweep_interval: timedelta,
        due_poll_interval: timedelta = DUE_POLL_INTERVAL,
        reconcile: Callable[[datetime], int] | None = None,
        reconcile_interval: timedelta = timedelta(minutes=15),
    ) -> None:
        self.work = work
        self.clock = clock
        self.leadership = leadership
        self.sweep_interval = sweep_interval
        # Never longer than a sweep interval: the sweep looks anyway.
        self.due_poll_interval = min(due_poll_interval, sweep_interval)
        self.reconcile = reconcile
        self.reconcile_interval = reconcile_interval
        self._leading = False
        self._sweep_lock = threading.Lock()
        self._reconcile_jobs: BackgroundScheduler | None = None
        # Everything due at this instant has been drained (what could be taken): the next
        # drain waits for a later expiry, or for the sweep.
        self._drained_to: datetime | None = None
        # After a failed drain (the database unreachable, say), not before this.
        self._drain_again_at: datetime | None = None
        # When the last sweep ran and what it did (read by bot.heartbeat).
        self.last_sweep: tuple[datetime, SweepResult] | None = None

    @property
    def leading(self) -> bool:
        """True while this process leads (and so drains and sweeps)."""
        return self._leading

    # --- the work ------------------------------------------------------------------------

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
            self._drained_to = now
            result = SweepResult(revoked, timed_out, retried, reminded, recovered)
            self.last_sweep = (now, result)
            if any((revoked, timed_out, retried, reminded, recovered)):
                log.info("sweep: %s", result)
            return result

    def drain_if_due(self) -> bool:
        """Revoke everything due now if a grant expired since the last drain. True when
        it drained (whatever it could take): the caller looks again before sleeping."""
        return self._drain_if_due(self.clock.now(), self._next_expiry())

    def _drain_if_due(self, now: datetime, due: datetime | None) -> bool:
        if self._drain_again_at is not None and now < self._drain_again_at:
            return False
        if due is None or due > now:
            return False
        try:
            revoked = self.work.revoke_overdue(now)
        except Exception:
            log.exception("revoking expired grants failed; trying again in %s",
                          self.due_poll_interval)
            self._drain_again_at = now + self.due_poll_interval
            return False
        self._drained_to, self._drain_again_at = now, None
        if revoked:
            log.info("revoked %d expired grant(s)", revoked)
        return True

    def sleep_until_next_due(self, stop: threading.Event, next_sweep: datetime,
                             next_expiry: datetime | None) -> bool:
        """Sleep until `next_expiry` (the earliest not yet drained), the next sweep or the
        next look for expiries made meanwhile, whichever comes first. True when `stop`
        was set."""
        now = self.clock.now()
        wake = min(next_sweep, now + self.due_poll_interval)
        if next_expiry is not None:
            wake = min(wake, max(next_expiry, self._drain_again_at or next_expiry))
        return stop.wait(max((wake - now).total_seconds(), _SHORTEST_SLEEP))

    def _next_expiry(self) -> datetime | None:
        try:
            return self.work.next_expiry(after=self._drained_to)
        except Exception:
            # Not fatal: the sweep revokes overdue grants on its own schedule.
            log.warning("could not read the next expiry; looking again shortly",
                        exc_info=True)
            return None

    @staticmethod
    def _safely(step: Callable[[datetime], int], now: datetime) -> int:
        # One failing step (say, IAM throttling) must not stop the others.
        try:
            return step(now)
        except Exception:
            log.exception("sweep step %s failed; it runs again next sweep", step.__name__)
            return 0

    # --- leading -------------------------------------------------------------------------

    def lead(self, stop: threading.Event) -> None:
        """While this process holds leadership and `stop` is not set: catch up (the first
        sweep revokes everything overdue), then drain at each expiry and sweep on time."""
        self._leading = True
        self._drained_to = self._drain_again_at = None
        self._start_reconcile()
        try:
            self.sweep()
            next_sweep = self.clock.now() + self.sweep_interval
            while not stop.is_set():
                if not self.leadership.still_held():
                    log.error("lost scheduler leadership; stopping and re-electing")
                    return
                if self.clock.now() >= next_sweep:
                    self.sweep()
                    next_sweep = self.clock.now() + self.sweep_interval
                # One look at the database per turn: what expires next, not drained yet.
                now, next_expiry = self.clock.now(), self._next_expiry()
                if self._drain_if_due(now, next_expiry):
                    continue  # more may have come due while it drained
                if self.sleep_until_next_due(stop, next_sweep, next_expiry):
                    return
        finally:
            self._stop_reconcile()
            self._leading = False

    def _start_reconcile(self) -> None:
        """Reconcile now, then every reconcile_interval, until leading stops: an interval
        job on APScheduler, in its own thread, so a long IAM listing never holds up expiry.
        One run at a time; a run that overran its interval is not repeated to catch up."""
        if self.reconcile is None:
            return
        jobs = BackgroundScheduler(timezone=UTC)
        jobs.add_job(self._reconcile_once, "interval", id="scheduled-reconcile",
                     seconds=self.reconcile_interval.total_seconds(),
                     next_run_time=datetime.now(UTC), max_instances=1, coalesce=True,
                     misfire_grace_time=None)
        jobs.start()
        self._reconcile_jobs = jobs

    def _reconcile_once(self) -> None:
        assert self.reconcile is not None
        try:
            self.reconcile(self.clock.now())
        except Exception:
            log.exception("scheduled reconcile failed; it runs again in %s",
                          self.reconcile_interval)

    def _stop_reconcile(self) -> None:
        if self._reconcile_jobs is not None:
            # A run in flight finishes (its repairs are each one IAM call and one commit).
            self._reconcile_jobs.shutdown(wait=True)
            self._reconcile_jobs = None

    def run_forever(self, stop: threading.Event) -> None:
        """Wait to lead, then lead until `stop` is set; after losing leadership, wait
        again."""
        poll = max(self.sweep_interval.total_seconds() / 3, 0.2)
        while not stop.is_set():
            # Said only by a standby: a process that leads at once starts quietly.
            if not self.leadership.try_acquire():
                log.info("waiting to become the scheduler leader (another scheduler leads)")
                if not wait_for_leadership(self.leadership, stop, poll):
                    return
            log.info("this process is now the scheduler leader")
            try:
                self.lead(stop)
            finally:
                self.leadership.release()
