"""Engine and session factory, and running the Alembic migrations programmatically."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from bot.resources import MIGRATIONS_DIR as MIGRATIONS_DIR  # re-exported: callers import it here
from bot.resources import SOURCE_ROOT

# The source checkout (tests run Alembic's own command line from there).
PROJECT_ROOT = SOURCE_ROOT

SessionFactory = sessionmaker[Session]


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine for DATABASE_URL. On SQLite every transaction starts with BEGIN IMMEDIATE
    so concurrent writers queue instead of losing updates or failing at commit."""
    if database_url.startswith("sqlite"):
        engine = create_engine(
            database_url,
            connect_args={"timeout": 30, "check_same_thread": False},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take over transaction handling from the driver so BEGIN IMMEDIATE is ours.
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(database_url, pool_pre_ping=True, **kwargs)


def make_session_factory(engine: Engine) -> SessionFactory:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    # Built here rather than read from alembic.ini (ALEMBIC_INI, for Alembic's own command
    # line), whose `prepend_sys_path = .` would put the working directory on sys.path.
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # `%` must be doubled for ConfigParser interpolation (URL-encoded passwords).
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(database_url), revision)
