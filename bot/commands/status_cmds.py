"""`connect-access status [--json]`: is expiry being enforced? The schedulers' heartbeats
(leader or standby, last sweep, stale ones) and the grants overdue right now.

Exit status 0 when a scheduler leads with a fresh heartbeat (with --host: when that host
has a fresh scheduler, the container health check), 1 otherwise, 2 when the database
cannot be used.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from sqlalchemy.exc import SQLAlchemyError

from bot.commands.db_cmds import open_database
from bot.heartbeat import scheduler_status


def _sweep_text(sweep: dict[str, int] | None) -> str:
    if not sweep:
        return "no sweep yet"
    return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in sweep.items())


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        host: str | None = typer.Option(
            None, "--host", help="Only schedulers on this host; exit 0 if one is fresh."),
        quiet: bool = typer.Option(False, "--quiet", help="Print nothing; exit status only."),
    ) -> None:
        """The schedulers (leader, standbys, stale heartbeats) and overdue grants."""
        engine, sessions = open_database()
        try:
            report = scheduler_status(sessions, datetime.now(UTC), host=host)
        except SQLAlchemyError as exc:
            typer.echo(f"error: could not read the scheduler heartbeats: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            engine.dispose()
        if quiet:
            raise typer.Exit(0 if report["ok"] else 1)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            if not report["schedulers"]:
                typer.echo("no scheduler has written a heartbeat"
                           + (f" on {host}" if host else "")
                           + "; is `connect-access scheduler` running?")
            for item in report["schedulers"]:
                state = "STALE (process gone or stuck)" if item["stale"] else item["role"]
                typer.echo(f"{state}: {item['id']} (connect-access {item['version']}), last "
                           f"beat {item['beat_age_seconds']}s ago; last sweep "
                           f"{item['last_sweep_at'] or '-'}: {_sweep_text(item['last_sweep'])}")
            if host is None and report["leader"] is None and report["schedulers"]:
                typer.echo("no scheduler leads: grants are not being revoked at expiry "
                           "(their policies' time condition still ends them)")
            oldest = report["oldest_overdue_seconds"]
            typer.echo(f"overdue grants: {report['overdue_grants']}"
                       + (f" (oldest {oldest}s past expiry)" if oldest is not None else ""))
        if not report["ok"]:
            raise typer.Exit(1)
