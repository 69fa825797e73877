"""Alembic environment: the URL comes from the caller (bot.db.upgrade) or from DATABASE_URL
through bot.settings, never from alembic.ini."""

from __future__ import annotations

from typing import Any

from alembic import context
from alembic.util import CommandError
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from bot.db import make_engine
from bot.models import Base

config = context.config
target_metadata = Base.metadata

# The job table APScheduler made for schedulers before the expiry loop: no model, no
# migration (it was never the schema's), still present in older databases; autogenerate
# must neither create nor drop it.
IGNORED_TABLES = frozenset({"apscheduler_jobs"})


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    return not (type_ == "table" and name in IGNORED_TABLES)


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from bot.settings import SettingsError, load_settings

    try:
        return load_settings().database_url
    except SettingsError as exc:
        # Alembic's command line prints a CommandError as one line, without a traceback.
        raise CommandError(f"invalid setting {exc}") from None


def configure_release_logging() -> None:
    """`alembic upgrade head` (the Procfile's release) logs like every other process:
    LOG_LEVEL and LOG_FORMAT, and Alembic's own "Running upgrade ..." lines at INFO. Not
    when bot.db runs the migrations inside another command, which has its logging."""
    import logging

    from bot.logs import configure_logging_from_environment

    level = configure_logging_from_environment("release")
    logging.getLogger("alembic").setLevel(level)


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=include_name,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        include_name=include_name,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    url = database_url()
    engine = make_engine(url)
    try:
        try:
            new_connection = engine.connect()
        except OperationalError as exc:
            where = engine.url.render_as_string(hide_password=True)
            cause = str(exc.orig or exc).strip().splitlines()
            raise CommandError(f"cannot connect to the database {where} "
                               f"({cause[0] if cause else type(exc).__name__}); check "
                               "DATABASE_URL and that the database server is up") from None
        with new_connection:
            run_with(new_connection)
    finally:
        engine.dispose()


if config.config_file_name is not None and not config.get_main_option("sqlalchemy.url"):
    configure_release_logging()  # Alembic's own command line, on DATABASE_URL
if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
