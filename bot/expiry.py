"""The scheduler's work (bot.scheduler.ExpiryWork) done through the request lifecycle.

Every revocation goes through RequestService.revoke_due, which claims the request row
(SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL), re-checks that the grant is still due and
moves it to `revoking` with a lease before calling IAM. So a scheduled job, the sweep and a
second scheduler process racing for one grant revoke it exactly once; the loser gets None.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from sqlalchemy import ColumnElement, select

from bot.db import SessionFactory
from bot.lifecycle import ACTIVE, IRREVOCABLE, REVOKED, REVOKING, RequestService
from bot.models import Grant

log = logging.getLogger(__name__)


class LifecycleExpiryWork:
    """ExpiryWork over a RequestService. `revoke_workers` > 1 revokes due grants in a small
    thread pool: IAM calls dominate a revocation, and many grants can expire together."""

    def __init__(self, service: RequestService, sessions: SessionFactory, *,
                 revoke_workers: int = 1) -> None:
        if revoke_workers < 1:
            raise ValueError("revoke_workers must be at least 1")
        self.service = service
        self.sessions = sessions
        self.revoke_workers = revoke_workers
        # When many grants expire together, the scheduled jobs and the sweep reach the same
        # grants. The row claim keeps that correct; these sets keep it cheap, by skipping
        # grants this process is revoking right now or has already revoked.
        self._in_flight: set[str] = set()
        self._revoked: set[str] = set()
        self._lock = threading.Lock()

    def revoke_grant(self, grant_id: str, *, reason: str) -> bool:
        """The scheduled job for one grant. False when it is not due (extended, already
        revoked, or another worker holds it)."""
        state = self._revoke_one(grant_id, None)
        if state is not None and state != REVOKED:
            log.warning("revoking grant %s (%s) did not finish; the sweep retries it",
                        grant_id, reason)
        return state == REVOKED

    def revoke_overdue(self, now: datetime) -> int:
        """Active grants past expiry, and revocations whose retry is due."""
        due = (((Grant.state == ACTIVE) & (Grant.expires_at <= now))
               | ((Grant.state == REVOKING) & (Grant.next_attempt_at <= now)))
        return self._revoke_where(due, now)

    def retry_irrevocable(self, now: datetime) -> int:
        """Irrevocable grants come due again every timings.irrevocable_retry (the lifecycle
        sets next_attempt_at on that longer period)."""
        due = (Grant.state == IRREVOCABLE) & (Grant.next_attempt_at <= now)
        return self._revoke_where(due, now)

    def expire_pending(self, now: datetime) -> int:
        return len(self.service.expire_pending(now))

    def send_reminders(self, now: datetime) -> int:
        """Requesters shortly before expiry, approvers about requests waiting too long;
        the lifecycle stamps each so it is sent once."""
        return len(self.service.expiring_soon(now)) + len(self.service.pending_reminders(now))

    def active_expiries(self) -> list[tuple[str, datetime]]:
        with self.sessions() as session:
            return [(grant_id, expires_at) for grant_id, expires_at in session.execute(
                select(Grant.id, Grant.expires_at).where(Grant.state == ACTIVE))]

    # -------------------------------------------------------------------------------------

    def _revoke_where(self, condition: ColumnElement[bool], now: datetime) -> int:
        with self.sessions() as session:
            grant_ids = list(session.execute(
                select(Grant.id).where(condition).order_by(Grant.expires_at)).scalars())
        with self._lock:
            # Forget revoked grants that are no longer listed as due, to stay bounded.
            self._revoked &= set(grant_ids)
        if not grant_ids:
            return 0
        return sum(1 for state in self._map(lambda g: self._revoke_one(g, now), grant_ids)
                   if state == REVOKED)

    def _revoke_one(self, grant_id: str, now: datetime | None) -> str | None:
        with self._lock:
            if grant_id in self._in_flight or grant_id in self._revoked:
                return None
            self._in_flight.add(grant_id)
        try:
            outcome = self.service.revoke_due(grant_id, now)
        except Exception:
            # One grant failing (a database hiccup) must not stop the rest of the batch.
            log.exception("revoking grant %s failed; the next sweep tries again", grant_id)
            return None
        finally:
            with self._lock:
                self._in_flight.discard(grant_id)
        if outcome is None:
            return None
        if outcome.state == REVOKED:
            with self._lock:
                self._revoked.add(grant_id)
        return outcome.state

    def _map(self, work: Callable[[str], str | None], grant_ids: Sequence[str]
             ) -> list[str | None]:
        if self.revoke_workers == 1 or len(grant_ids) == 1:
            return [work(grant_id) for grant_id in grant_ids]
        with ThreadPoolExecutor(max_workers=self.revoke_workers,
                                thread_name_prefix="revoke") as pool:
            return list(pool.map(work, grant_ids))
