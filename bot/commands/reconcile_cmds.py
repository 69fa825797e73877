"""`connect-access reconcile [--dry-run]`: compare IAM with the grants in the database,
repair the differences (orphans removed, missing and tampered policies restored, grants
stuck in `granting` settled) and print a summary table.

Progress goes to stderr as IAM is read (`--quiet` turns it off). Principals IAM would not
let it read (throttled past every retry, access denied) are listed as `unchecked` and the
run carries on with the rest.

Exit status: 0 when everything found was repaired (or, with --dry-run, could be); 1 when a
repair failed, IAM could not be read (for some principals or at all), an active grant
could not be checked (a person must look) or a grant changed state while reconcile ran
(run it again); 2 for unusable settings, config or catalog.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer

from bot.commands.db_cmds import require_database_or_exit, settings_or_exit

if TYPE_CHECKING:
    from bot.reconcile_model import ReconcileProgress


def register(app: typer.Typer) -> None:
    @app.command("reconcile")
    def reconcile_command(
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Report what would be repaired; change nothing."),
        quiet: bool = typer.Option(
            False, "--quiet", help="No progress lines on stderr."),
        as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
    ) -> None:
        """Find and repair differences between IAM and the bot's grants."""
        from botocore.exceptions import BotoCoreError, ClientError
        from sqlalchemy.exc import SQLAlchemyError

        from bot.aws.reconcile import format_summary
        from bot.catalog import CatalogError
        from bot.config import ConfigError
        from bot.ports import GrantError
        from bot.reconcile_job import alert_run, run_reconcile
        from bot.runtime import cli_runtime

        settings = settings_or_exit()
        try:
            runtime = cli_runtime(settings)
        except (ConfigError, CatalogError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        require_database_or_exit(runtime.engine, settings)
        try:
            try:
                run = run_reconcile(runtime, dry_run=dry_run,
                                    progress=None if quiet else _progress_printer())
            except GrantError as exc:
                typer.echo(f"error: could not read IAM, nothing was changed: {exc}", err=True)
                raise typer.Exit(1) from None
            except (BotoCoreError, ClientError) as exc:
                typer.echo(f"error: could not list tagged principals in IAM, nothing was "
                           f"changed: {exc}", err=True)
                raise typer.Exit(1) from None
            except SQLAlchemyError as exc:
                typer.echo(f"error: reconcile stopped at a database step: {exc}", err=True)
                raise typer.Exit(1) from None
            if not dry_run:
                alert_run(runtime, run)
        finally:
            runtime.close()
        findings = run.findings
        unchecked = [f for f in findings if f.kind == "unchecked"]
        failed = [f for f in findings if f.error and f.kind != "unchecked"]
        if as_json:
            typer.echo(json.dumps({
                "dry_run": dry_run,
                "findings": [f.as_dict() for f in findings],
                "unverifiable": [dataclasses.asdict(item) for item in run.unverifiable],
                "conflicts": [str(conflict) for conflict in run.conflicts],
                "failed": len(failed),
                "unchecked": len(unchecked),
            }, indent=2))
            if failed or unchecked or run.unverifiable or run.conflicts:
                raise typer.Exit(1)
            return
        typer.echo(format_summary(findings))
        if dry_run:
            typer.echo("dry run: nothing was changed")
        for item in run.unverifiable:
            typer.echo(f"warning: grant {item.grant_id} (request #{item.request_id}) on "
                       f"{item.principal_arn} was not checked: {item.reason}", err=True)
        for conflict in run.conflicts:
            typer.echo(f"warning: {conflict}; run reconcile again", err=True)
        if unchecked:
            typer.echo(f"error: {len(unchecked)} principal(s) could not be read from IAM and "
                       "were not checked (see the unchecked rows); run reconcile again",
                       err=True)
        if failed:
            typer.echo(f"error: {len(failed)} repair(s) failed; see the ERROR column",
                       err=True)
        if failed or unchecked or run.unverifiable or run.conflicts:
            raise typer.Exit(1)


def _progress_printer(every_s: float = 1.0) -> Callable[[ReconcileProgress], None]:
    """Prints a progress line to stderr at most every `every_s` seconds, and the last."""
    import time

    last: list[float] = []

    def show(progress: ReconcileProgress) -> None:
        now = time.monotonic()
        if progress.stage != "done" and last and now - last[0] < every_s:
            return
        last[:] = [now]
        what = "checked" if progress.stage == "done" else "reading IAM:"
        typer.echo(f"reconcile: {what} {progress.done:,}/{progress.total:,} principal(s)"
                   f", {progress.unchecked:,} unchecked", err=True)

    return show
