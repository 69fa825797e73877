"""Is the database there, and at the schema this version expects? One answer, in words an
operator can act on, for every command and process that touches the database."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bot import __version__
from bot.resources import MIGRATIONS_DIR

UPGRADE_HINT = "run `connect-access db upgrade` first"


class DatabaseNotReady(Exception):
    """The database cannot be used as it is; the message says why and what to do.
    `reason` is one of: missing, unreachable, not_migrated, behind, unknown_revision."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head


@functools.cache
def migration_head() -> str:
    """The newest migration this installation ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


@functools.cache
def known_revisions() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    return frozenset(s.revision for s in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions())


def sqlite_file(database_url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and for :memory:)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def schema_state(engine: Engine) -> SchemaState:
    """The database's migration revision. Raises SQLAlchemyError when it cannot be read."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return SchemaState(current=current, head=migration_head())


def require_current_schema(engine: Engine, description: str) -> SchemaState:
    """The schema state, or DatabaseNotReady saying why the database cannot be used.
    `description` names the database for the message (bot.logs.describe_database). A
    SQLite file that does not exist is reported, never created."""
    path = sqlite_file(str(engine.url))
    if path is not None and not path.exists():
        raise DatabaseNotReady(
            "missing", f"there is no database at {description}: set DATABASE_URL to the "
                       f"bot's database, or run `connect-access db upgrade` to create it")
    try:
        state = schema_state(engine)
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(
            cause).__name__
        raise DatabaseNotReady(
            "unreachable", f"cannot connect to the database {description} ({first_line}); "
                           "check DATABASE_URL and that the database server is up") from None
    if state.current is None:
        raise DatabaseNotReady(
            "not_migrated", f"the database {description} has no schema yet; {UPGRADE_HINT}")
    if state.current != state.head:
        if state.current not in known_revisions():
            raise DatabaseNotReady(
                "unknown_revision",
                f"the database {description} is at migration {state.current}, which "
                f"connect-access {__version__} does not know (a newer version migrated "
                "it); upgrade this installation")
        raise DatabaseNotReady(
            "behind", f"the database {description} is at migration {state.current}, not the "
                      f"latest ({state.head}); {UPGRADE_HINT}")
    return state
