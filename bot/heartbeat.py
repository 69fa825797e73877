"""Scheduler heartbeats: each scheduler process rewrites its row in `scheduler_heartbeats`
every few seconds (leader or standby, its last sweep), and `connect-access status` reads
them with the overdue grants, so an operator (or a container health check) can see
whether expiry is being enforced without reading logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, func, select

from bot import __version__
from bot.db import SessionFactory
from bot.models import Grant, SchedulerHeartbeat
from bot.ports import Clock
from bot.states import LIVE_STATES

log = logging.getLogger(__name__)

LONGEST_BEAT = timedelta(seconds=10)
# A beat this much later than its interval (x3) means the process is gone or stuck.
STALE_GRACE = timedelta(seconds=5)
FORGET_AFTER = timedelta(days=1)


class SweepReport(Protocol):
    """What the heartbeat reads from the scheduler (bot.scheduler.ExpiryLoop)."""

    @property
    def leading(self) -> bool: ...

    @property
    def last_sweep(self) -> tuple[datetime, Any] | None: ...


def beat_interval_for(sweep_interval: timedelta) -> timedelta:
    return max(timedelta(seconds=1), min(sweep_interval, LONGEST_BEAT))


def process_id(host: str, pid: int) -> str:
    return f"{host}:{pid}"


class HeartbeatWriter:
    def __init__(self, sessions: SessionFactory, clock: Clock, source: SweepReport, *,
                 sweep_interval: timedelta, host: str | None = None,
                 pid: int | None = None) -> None:
        self.sessions = sessions
        self.clock = clock
        self.source = source
        self.sweep_interval = sweep_interval
        self.interval = beat_interval_for(sweep_interval)
        self.host = host or socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.id = process_id(self.host, self.pid)
        self.started_at = clock.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        now = self.clock.now()
        leading = self.source.leading
        sweep = self.source.last_sweep
        with self.sessions() as session, session.begin():
            row = session.get(SchedulerHeartbeat, self.id)
            if row is None:
                row = SchedulerHeartbeat(id=self.id, host=self.host, pid=self.pid,
                                         started_at=self.started_at)
                session.add(row)
            row.version = __version__
            row.role = "leader" if leading else "standby"
            row.beat_at = now
            row.beat_interval_seconds = self.interval.total_seconds()
            row.sweep_interval_seconds = self.sweep_interval.total_seconds()
            if sweep is not None:
                row.last_sweep_at = sweep[0]
                row.last_sweep = asdict(sweep[1])
            if leading:
                # Rows of processes long gone would only clutter `status`.
                session.execute(delete(SchedulerHeartbeat).where(
                    SchedulerHeartbeat.beat_at < now - FORGET_AFTER))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception:
                # A missed beat shows as a stale row; the scheduler's work goes on.
                log.warning("could not write the scheduler heartbeat", exc_info=True)
            self._stop.wait(self.interval.total_seconds())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scheduler-heartbeat",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove this process's row (it is stopping, not dead)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(Exception), self.sessions() as session, session.begin():
            session.execute(delete(SchedulerHeartbeat).where(SchedulerHeartbeat.id == self.id))


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def scheduler_status(sessions: SessionFactory, now: datetime,
                     host: str | None = None) -> dict[str, Any]:
    """Every scheduler's last heartbeat (fresh or stale), the leader, and the grants
    overdue right now. `ok`: a fresh leader exists (with `host`: a fresh heartbeat from
    that host, leader or standby)."""
    with sessions() as session:
        query = select(SchedulerHeartbeat).order_by(SchedulerHeartbeat.started_at)
        if host is not None:
            query = query.where(SchedulerHeartbeat.host == host)
        rows = list(session.scalars(query))
        overdue_count, oldest_expiry = session.execute(
            select(func.count(Grant.id), func.min(Grant.expires_at)).where(
                Grant.state.in_(LIVE_STATES), Grant.expires_at <= now)).one()
    schedulers = []
    for row in rows:
        age = (now - row.beat_at).total_seconds()
        stale = now - row.beat_at > 3 * timedelta(seconds=row.beat_interval_seconds) + STALE_GRACE
        schedulers.append({
            "id": row.id, "host": row.host, "pid": row.pid, "version": row.version,
            "role": row.role, "stale": stale, "started_at": _iso(row.started_at),
            "beat_at": _iso(row.beat_at), "beat_age_seconds": round(age, 1),
            "sweep_interval_seconds": row.sweep_interval_seconds,
            "last_sweep_at": _iso(row.last_sweep_at), "last_sweep": row.last_sweep,
        })
    leaders = [s for s in schedulers if s["role"] == "leader" and not s["stale"]]
    oldest = None
    if oldest_expiry is not None:
        oldest = round((now - oldest_expiry).total_seconds(), 1)
    ok = bool([s for s in schedulers if not s["stale"]]) if host is not None else bool(leaders)
    return {
        "ok": ok,
        "leader": leaders[0]["id"] if leaders else None,
        "schedulers": schedulers,
        "overdue_grants": int(overdue_count or 0),
        "oldest_overdue_seconds": oldest,
        "checked_at": _iso(now),
    }
