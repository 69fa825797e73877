"""Who runs the scheduler: exactly one process at a time.

PostgreSQL: a session-level advisory lock held on a dedicated connection for as long as the
process lives. If the process dies, PostgreSQL drops the connection and the lock with it, so
a standby polling `pg_try_advisory_lock` takes over.

SQLite: only one scheduler is supported. An exclusive `flock` on a file beside the database
makes a second process refuse to start with a clear message instead of double-running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

# The lock is the two-int form (class, key): the class is fixed ("ca" for connect-access),
# the key is a hash of the current schema, so deployments (or test runs) that share one
# PostgreSQL database in separate schemas elect separate leaders. The two-int space never
# collides with the single-bigint advisory locks the lifecycle takes.
ADVISORY_LOCK_CLASS = 0x6361
_TRY_LOCK = text(
    "SELECT pg_try_advisory_lock(:lock_class, hashtext('scheduler:' || current_schema()))"
)
_UNLOCK = text(
    "SELECT pg_advisory_unlock(:lock_class, hashtext('scheduler:' || current_schema()))"
)


class LeadershipError(RuntimeError):
    """This process cannot become (or stay) the scheduler leader."""


class Leadership(Protocol):
    def try_acquire(self) -> bool: ...

    def still_held(self) -> bool: ...

    def release(self) -> None: ...


@dataclass
class PostgresLeadership:
    engine: Engine
    lock_class: int = ADVISORY_LOCK_CLASS
    _connection: Connection | None = field(default=None, init=False)

    def try_acquire(self) -> bool:
        if self._connection is not None:
            # Session advisory locks are re-entrant: asking again on the connection that
            # holds it would stack a second hold. We already lead.
            return self.still_held()
        self._connection = self.engine.connect()
        try:
            acquired = bool(
                self._connection.execute(_TRY_LOCK, {"lock_class": self.lock_class}).scalar()
            )
            # Keep the connection out of a transaction so it is not "idle in transaction".
            self._connection.commit()
        except Exception:
            self._drop()
            raise
        if not acquired:
            # Give the connection back: a standby holds no connection while it waits.
            self._connection.close()
            self._connection = None
        return acquired

    def still_held(self) -> bool:
        if self._connection is None:
            return False
        try:
            # A session-level advisory lock lives exactly as long as its connection, so a
            # live connection means the lock is still ours.
            self._connection.execute(text("SELECT 1"))
            self._connection.commit()
        except Exception:
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._connection is not None:
            # Dropping the connection releases the lock anyway; unlocking first just makes
            # the hand-over immediate when the server is still reachable.
            with contextlib.suppress(Exception):
                self._connection.execute(_UNLOCK, {"lock_class": self.lock_class})
                self._connection.commit()
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            finally:
                self._connection = None


@dataclass
class SqliteLeadership:
    database_path: Path
    _handle: IO[str] | None = field(default=None, init=False)

    @property
    def lock_path(self) -> Path:
        return self.database_path.with_name(self.database_path.name + ".scheduler.lock")

    def try_acquire(self) -> bool:
        handle = open(self.lock_path, "a+")  # noqa: SIM115 - held open as the lock
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise LeadershipError(
                f"another scheduler is already running on {self.database_path} "
                f"(it holds {self.lock_path}). On SQLite only one scheduler process is "
                "supported; use PostgreSQL to run a standby."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return True

    def still_held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def leadership_for(engine: Engine) -> Leadership:
    url = make_url(str(engine.url))
    if url.get_backend_name() == "postgresql":
        return PostgresLeadership(engine)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:"):
            raise LeadershipError("the scheduler needs a file or server database, not :memory:")
        return SqliteLeadership(Path(database).resolve())
    raise LeadershipError(f"unsupported database for the scheduler: {url.get_backend_name()}")


def wait_for_leadership(
    leadership: Leadership, stop: threading.Event, poll_seconds: float
) -> bool:
    """Block until this process leads (True) or `stop` is set (False)."""
    while not stop.is_set():
        if leadership.try_acquire():
            return True
        stop.wait(poll_seconds)
    return False
