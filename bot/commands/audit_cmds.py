"""`connect-access audit verify` and `audit export`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from enum import StrEnum

import typer
from sqlalchemy.exc import SQLAlchemyError

from bot.audit import export_lines, verify_chain
from bot.commands.db_cmds import open_database


class Format(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


def _parse_time(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        typer.echo(f"error: {option}: expected an ISO date or time like 2026-11-01 or "
                   f"2026-11-01T12:00:00Z, got {value!r}", err=True)
        raise typer.Exit(2) from None
    # A time without zone is read as UTC, like every time the bot records.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def register(app: typer.Typer) -> None:
    audit_app = typer.Typer(help="Check and export the tamper-evident audit trail.")
    app.add_typer(audit_app, name="audit")

    @audit_app.command("verify")
    def audit_verify() -> None:
        """Walk the hash chain; exit 1 and name the first broken link if any."""
        engine, sessions = open_database()
        try:
            with sessions() as session:
                result = verify_chain(session)
        except SQLAlchemyError as exc:
            typer.echo(f"error: could not read the audit trail: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            engine.dispose()
        if not result.ok:
            typer.echo(f"audit chain BROKEN at event {result.broken_seq}: {result.problem} "
                       f"({result.checked} events before it verified)", err=True)
            raise typer.Exit(1)
        typer.echo(f"audit chain intact: {result.checked} events verified")

    @audit_app.command("export")
    def audit_export(
        fmt: Format = typer.Option(..., "--format", help="csv or jsonl."),
        since: str | None = typer.Option(None, "--since", help="Events at or after (ISO, UTC)."),
        until: str | None = typer.Option(None, "--until", help="Events before (ISO, UTC)."),
        requester: str | None = typer.Option(None, "--requester", help="Slack user id."),
        entry: str | None = typer.Option(None, "--entry", help="Catalog entry id."),
    ) -> None:
        """Stream audit events to stdout, oldest first."""
        filters = {"since": _parse_time("--since", since), "until": _parse_time("--until", until),
                   "requester": requester, "entry_id": entry}
        engine, sessions = open_database()
        out = sys.stdout
        try:
            with sessions() as session:
                for line in export_lines(session, fmt.value, **filters):
                    out.write(line)
        except SQLAlchemyError as exc:
            typer.echo(f"error: could not read the audit trail: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            engine.dispose()
        out.flush()
