"""The scheduler's work (bot.scheduler.ExpiryWork) done through the request lifecycle.

Revocation goes through RequestService.revoke_due_batch: one transaction claims a batch of
due grants (request rows FOR UPDATE SKIP LOCKED on PostgreSQL) and leases them, the IAM
calls run in a thread pool outside any transaction, and one transaction records the
results. A scheduled job, the sweep and a second scheduler process racing for one grant
revoke it exactly once. Batches matter when thousands of grants expire together: every
audit event takes the single chain-head row lock, and a batch takes it twice, not twice
per grant.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from bot.db import SessionFactory
from bot.lifecycle import RequestService
from bot.models import Grant
from bot.states import ACTIVE, IRREVOCABLE, REVOKED, REVOKING

if TYPE_CHECKING:
    from bot.scheduler import DrainObserver

log = logging.getLogger(__name__)

# Remembered revoked grant ids (so the many jobs of a mass expiry return at once) are
# forgotten past this many; forgetting only costs one cheap claim query.
_REVOKED_MEMORY = 100_000


class LifecycleExpiryWork:
    """ExpiryWork over a RequestService. Due grants are revoked in batches of
    `batch_size`; `revoke_workers` > 1 runs a batch's IAM calls in a thread pool, since
    they dominate a revocation and many grants can expire together. With revoke_workers
    > 1, two batches are in flight at once, so one batch's database work (claim, record)
    overlaps the other's IAM calls. An observer (the scheduler) hears of each batch's
    grants, and brackets each job's drain, so it can keep the jobs of a mass expiry from
    running one by one."""

    def __init__(self, service: RequestService, sessions: SessionFactory, *,
                 revoke_workers: int = 1, batch_size: int = 200,
                 batches_in_flight: int | None = None,
                 stuck_after: timedelta = timedelta(seconds=30)) -> None:
        if revoke_workers < 1:
            raise ValueError("revoke_workers must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if batches_in_flight is None:
            batches_in_flight = 1 if revoke_workers == 1 else 2
        if batches_in_flight < 1:
            raise ValueError("batches_in_flight must be at least 1")
        self.service = service
        self.sessions = sessions
        self.revoke_workers = revoke_workers
        self.batch_size = batch_size
        self.batches_in_flight = batches_in_flight
        # How long a request may sit approved or granting before it counts as abandoned by
        # the process that was granting it (a grant takes a second or two).
        self.stuck_after = stuck_after
        self._unsettled: dict[int, tuple[int, datetime]] = {}  # id -> (version, first seen)
        # One drain at a time in this process: when many grants expire together, their
        # jobs and the sweep all arrive here, and the first drain takes every due grant.
        # The row claims keep it correct across processes; this keeps it cheap inside one.
        self._drain_lock = threading.Lock()
        self._revoked: dict[str, None] = {}  # insertion-ordered set of recent revocations
        self._lock = threading.Lock()
        self._observer: DrainObserver | None = None

    def observe_drains(self, observer: DrainObserver | None) -> None:
        self._observer = observer

    def revoke_grant(self, grant_id: str, *, reason: str) -> bool:
        """The scheduled job for one grant: drains every due grant (this one included) in
        batches. False when this call did not revoke it (not due: extended, already revoked,
        or another worker holds it)."""
        if self._recently_revoked(grant_id):
            return False
        observer = self._observer
        # Held while waiting too: the drain this job waits for (a sweep's, say) is taking
        # the other due jobs' grants already, and this job drains what is left after it.
        with (observer.draining() if observer is not None else contextlib.nullcontext(),
              self._drain_lock):
            # The drain we may have waited for has probably taken this grant already.
            if self._recently_revoked(grant_id):
                return False
            states = self._drain_locked(None, (ACTIVE, REVOKING))
        state = states.get(grant_id)
        if state is not None and state != REVOKED:
            log.warning("revoking grant %s (%s) did not finish; the sweep retries it",
                        grant_id, reason)
        return state == REVOKED

    def revoke_overdue(self, now: datetime) -> int:
        """Active grants past expiry, and revocations whose retry is due."""
        return self._drain(now, (ACTIVE, REVOKING))

    def retry_irrevocable(self, now: datetime) -> int:
        """Irrevocable grants come due again every timings.irrevocable_retry (the lifecycle
        sets next_attempt_at on that longer period)."""
        return self._drain(now, (IRREVOCABLE,))

    def expire_pending(self, now: datetime) -> int:
        return len(self.service.expire_pending(now))

    def send_reminders(self, now: datetime) -> int:
        """Requesters shortly before expiry, approvers about requests waiting too long;
        the lifecycle stamps each so it is sent once."""
        return len(self.service.expiring_soon(now)) + len(self.service.pending_reminders(now))

    def recover_stuck(self, now: datetime) -> int:
        """Requests this process has seen approved or granting, unchanged (same row
        version), for at least `stuck_after` by its own clock are settled. Their own
        timestamps are not used: they come from whichever host wrote them."""
        current = self.service.unsettled()
        remembered: dict[int, tuple[int, datetime]] = {}
        stale: dict[int, int] = {}
        for request_id, version in current.items():
            known = self._unsettled.get(request_id)
            first_seen = known[1] if known is not None and known[0] == version else now
            remembered[request_id] = (version, first_seen)
            if now - first_seen >= self.stuck_after:
                stale[request_id] = version
        self._unsettled = remembered
        if not stale:
            return 0
        return len(self.service.recover_stuck(stale, now))

    def active_expiries(self) -> list[tuple[str, datetime]]:
        with self.sessions() as session:
            return [(grant_id, expires_at) for grant_id, expires_at in session.execute(
                select(Grant.id, Grant.expires_at).where(Grant.state == ACTIVE))]

    # -------------------------------------------------------------------------------------

    def _drain(self, now: datetime, states: Collection[str]) -> int:
        with self._drain_lock:
            return sum(1 for state in self._drain_locked(now, states).values()
                       if state == REVOKED)

    def _drain_locked(self, now: datetime | None, states: Collection[str]) -> dict[str, str]:
        """Batches until nothing in `states` is due at `now` (None: the clock's time at
        each batch, so grants coming due during a long drain are taken too). Returns the
        state each handled grant ended in."""
        pool = (ThreadPoolExecutor(max_workers=self.revoke_workers, thread_name_prefix="revoke")
                if self.revoke_workers > 1 else None)
        ended: dict[str, str] = {}

        def drain() -> None:
            while True:
                outcomes = self.service.revoke_due_batch(
                    now, limit=self.batch_size, states=states, executor=pool)
                if not outcomes:
                    # Nothing left to claim (what another drain holds, it finishes).
                    return
                # Every handled grant is now revoked or waits for a later retry or lease,
                # so the next batch claims other grants and the loop ends.
                with self._lock:
                    ended.update((o.grant_id, o.state) for o in outcomes)
                self._remember([o.grant_id for o in outcomes if o.state == REVOKED])
                observer = self._observer
                if observer is not None:
                    # Their jobs are done with: retries are the sweep's, not a job's.
                    observer.handled([o.grant_id for o in outcomes])

        try:
            if self.batches_in_flight == 1:
                drain()
            else:
                # Batches claim disjoint grants (SKIP LOCKED on PostgreSQL; SQLite runs
                # the transactions one at a time), so these drains never share a grant.
                with ThreadPoolExecutor(max_workers=self.batches_in_flight,
                                        thread_name_prefix="revoke-batch") as drains:
                    for future in [drains.submit(drain)
                                   for _ in range(self.batches_in_flight)]:
                        future.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        return ended

    def _recently_revoked(self, grant_id: str) -> bool:
        with self._lock:
            return grant_id in self._revoked

    def _remember(self, grant_ids: list[str]) -> None:
        with self._lock:
            self._revoked.update(dict.fromkeys(grant_ids))
            if len(self._revoked) > _REVOKED_MEMORY:
                for old in list(self._revoked)[:len(self._revoked) // 2]:
                    del self._revoked[old]
