"""The expiry loop's work (bot.scheduler.ExpiryWork) done through the request lifecycle.

Revocation goes through RequestService.revoke_due_batch: one transaction claims a batch of
due grants (request rows FOR UPDATE SKIP LOCKED on PostgreSQL) and leases them, the IAM
calls run in a thread pool outside any transaction, and one transaction records the
results. The loop's drain, its sweep and a second scheduler process racing for one grant
revoke it exactly once. Batches matter when thousands of grants expire together: every
audit event takes the single chain-head row lock, and a batch takes it twice, not twice
per grant.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy import select

from bot.db import SessionFactory
from bot.lifecycle import RequestService
from bot.models import Grant
from bot.states import ACTIVE, IRREVOCABLE, REVOKED, REVOKING


class LifecycleExpiryWork:
    """ExpiryWork over a RequestService. Due grants are revoked in batches of
    `batch_size`; `revoke_workers` > 1 runs a batch's IAM calls in a thread pool, since
    they dominate a revocation and many grants can expire together. With revoke_workers
    > 1, two batches are in flight at once, so one batch's database work (claim, record)
    overlaps the other's IAM calls."""

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
        # One drain at a time in this process (the loop's and a sweep's never overlap; this
        # keeps a direct caller honest too). Row claims keep it correct across processes.
        self._drain_lock = threading.Lock()

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

    def next_expiry(self, after: datetime | None = None) -> datetime | None:
        """The earliest expires_at of an active grant (later than `after`, when given):
        one row off the (state, expires_at) index, cheap enough to ask every second."""
        query = select(Grant.expires_at).where(Grant.state == ACTIVE)
        if after is not None:
            query = query.where(Grant.expires_at > after)
        with self.sessions() as session:
            return session.execute(query.order_by(Grant.expires_at).limit(1)).scalar()

    # -------------------------------------------------------------------------------------

    def _drain(self, now: datetime, states: Collection[str]) -> int:
        """Batches until nothing in `states` is due at `now`; how many grants it revoked
        (the others handled wait for a retry, or went irrevocable)."""
        pool = (ThreadPoolExecutor(max_workers=self.revoke_workers, thread_name_prefix="revoke")
                if self.revoke_workers > 1 else None)
        revoked = 0
        count_lock = threading.Lock()

        def drain() -> None:
            nonlocal revoked
            while True:
                outcomes = self.service.revoke_due_batch(
                    now, limit=self.batch_size, states=states, executor=pool)
                if not outcomes:
                    # Nothing left to claim (what another drain holds, it finishes).
                    return
                # Every handled grant is now revoked or waits for a later retry or lease,
                # so the next batch claims other grants and the loop ends.
                with count_lock:
                    revoked += sum(1 for o in outcomes if o.state == REVOKED)

        with self._drain_lock:
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
        return revoked
