"""`connect-access grants list [--active]`: what is (or was) attached to whom."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from bot.commands.db_cmds import open_database
from bot.models import AccessRequest, Grant
from bot.states import ATTACHED_STATES


def _lag(grant: Grant, now: datetime) -> str:
    """Revocation lag: how long after expiry it came off, or how overdue it is now."""
    if grant.revocation_lag_seconds is not None:
        return f"{grant.revocation_lag_seconds:.0f}s"
    if grant.state in ATTACHED_STATES and grant.expires_at <= now:
        return f"overdue {(now - grant.expires_at).total_seconds():.0f}s"
    return "-"


def register(app: typer.Typer) -> None:
    grants_app = typer.Typer(help="Inspect grants (policies the bot attached).")
    app.add_typer(grants_app, name="grants")

    @grants_app.command("list")
    def grants_list(
        active: bool = typer.Option(False, "--active",
                                    help="Only grants still (or possibly) attached."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List grants, newest first: id, requester, entry, principal, state, expiry, lag."""
        now = datetime.now(UTC)
        query = (select(Grant, AccessRequest.requester, AccessRequest.entry_id)
                 .join(AccessRequest, AccessRequest.id == Grant.request_id)
                 .order_by(Grant.created_at.desc()))
        if active:
            query = query.where(Grant.state.in_(ATTACHED_STATES))
        engine, sessions = open_database()
        try:
            with sessions() as session:
                rows = [
                    {"id": grant.id, "request_id": grant.request_id, "requester": requester,
                     "entry_id": entry_id, "principal_arn": grant.principal_arn,
                     "state": grant.state, "expires_at": grant.expires_at.isoformat(),
                     "revoked_at": grant.revoked_at.isoformat() if grant.revoked_at else None,
                     "revocation_lag_seconds": grant.revocation_lag_seconds,
                     "lag": _lag(grant, now), "last_error": grant.last_error}
                    for grant, requester, entry_id in session.execute(query)
                ]
        except SQLAlchemyError as exc:
            typer.echo(f"error: could not read grants: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            engine.dispose()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        header = ["ID", "REQUESTER", "ENTRY", "PRINCIPAL", "STATE", "EXPIRES", "LAG"]
        lines = [header] + [
            [str(r[key]) for key in ("id", "requester", "entry_id", "principal_arn", "state")]
            + [str(r["expires_at"])[:19] + "Z", str(r["lag"])]
            for r in rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        for line in lines:
            typer.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True))
                       .rstrip())
        typer.echo(f"{len(rows)} grant(s)")
