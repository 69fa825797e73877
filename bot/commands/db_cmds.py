"""`connect-access db upgrade`: run the Alembic migrations on DATABASE_URL.

Also the small helpers the other database commands share (settings, a session factory on
a database checked to be reachable and migrated).
"""

from __future__ import annotations

import json

import typer
from sqlalchemy import Engine

from bot.db import SessionFactory, make_engine, make_session_factory
from bot.dbcheck import DatabaseNotReady, require_current_schema
from bot.logs import describe_database
from bot.settings import Settings, SettingsError, load_settings


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"error: invalid setting {exc}", err=True)
        raise typer.Exit(2) from None


def require_database_or_exit(engine: Engine, settings: Settings) -> None:
    """Stop the command with one line when the database is missing, unreachable or not
    at the latest migration."""
    try:
        require_current_schema(engine, describe_database(settings))
    except DatabaseNotReady as exc:
        engine.dispose()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def open_database() -> tuple[Engine, SessionFactory]:
    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    require_database_or_exit(engine, settings)
    return engine, make_session_factory(engine)


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(help="Manage the bot's database.")
    app.add_typer(db_app, name="db")

    @db_app.command("upgrade")
    def db_upgrade(
        revision: str = typer.Argument("head", help="Target revision (default: latest)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Bring the database schema up to date (Alembic `upgrade head` on DATABASE_URL)."""
        from alembic.util import CommandError
        from sqlalchemy.exc import SQLAlchemyError

        from bot.db import upgrade
        from bot.dbcheck import schema_state

        settings = settings_or_exit()
        where = describe_database(settings)
        engine = make_engine(settings.database_url)
        try:
            before = schema_state(engine).current
            upgrade(settings.database_url, revision)
            after = schema_state(engine)
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            typer.echo(f"error: could not migrate the database {where}: "
                       f"{str(cause).strip().splitlines()[0] if str(cause).strip() else cause!r}"
                       "; check DATABASE_URL and that the database server is up", err=True)
            raise typer.Exit(1) from None
        except CommandError as exc:
            typer.echo(f"error: could not migrate the database {where}: {exc}", err=True)
            raise typer.Exit(1) from None
        finally:
            engine.dispose()
        if as_json:
            typer.echo(json.dumps({"database": where, "from": before, "to": after.current,
                                   "head": after.head, "at_head": after.at_head}, indent=2))
            return
        if before == after.current:
            typer.echo(f"database {where} is already at {after.current}")
        else:
            typer.echo(f"database {where} upgraded from {before or 'nothing'} "
                       f"to {after.current}")
