"""`connect-access db upgrade`: run the Alembic migrations on DATABASE_URL.

Also the small helpers the other database commands share (settings, session factory).
"""

from __future__ import annotations

import typer
from sqlalchemy import Engine

from bot.db import SessionFactory, make_engine, make_session_factory
from bot.settings import Settings, SettingsError, load_settings


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"error: invalid setting {exc}", err=True)
        raise typer.Exit(2) from None


def open_database() -> tuple[Engine, SessionFactory]:
    engine = make_engine(settings_or_exit().database_url)
    return engine, make_session_factory(engine)


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(help="Manage the bot's database.")
    app.add_typer(db_app, name="db")

    @db_app.command("upgrade")
    def db_upgrade(
        revision: str = typer.Argument("head", help="Target revision (default: latest)."),
    ) -> None:
        """Bring the database schema up to date (Alembic `upgrade head` on DATABASE_URL)."""
        from sqlalchemy.exc import SQLAlchemyError

        from bot.db import upgrade

        settings = settings_or_exit()
        try:
            upgrade(settings.database_url, revision)
        except SQLAlchemyError as exc:
            typer.echo(f"error: could not migrate the database: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"database upgraded to {revision}")
