"""`connect-access reconcile [--dry-run]`: compare IAM with the grants in the database,
repair the differences (orphans removed, missing and tampered policies restored, grants
stuck in `granting` settled) and print a summary table.

Exit status: 0 when everything found was repaired (or, with --dry-run, could be); 1 when a
repair failed, IAM could not be read, an active grant could not be checked (a person must
look) or a grant changed state while reconcile ran (run it again); 2 for unusable
settings, config or catalog.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import typer

from bot.commands.db_cmds import settings_or_exit

if TYPE_CHECKING:
    from bot.runtime import Runtime


def register(app: typer.Typer) -> None:
    @app.command("reconcile")
    def reconcile_command(
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Report what would be repaired; change nothing."),
    ) -> None:
        """Find and repair differences between IAM and the bot's grants."""
        from botocore.exceptions import BotoCoreError, ClientError
        from sqlalchemy.exc import SQLAlchemyError

        from bot.aws.granter import IamGranter
        from bot.aws.reconcile import format_summary, reconcile
        from bot.catalog import CatalogError
        from bot.config import ConfigError
        from bot.ports import GrantError
        from bot.reconcile_store import DbReconcileStore
        from bot.runtime import build_runtime

        settings = settings_or_exit()
        try:
            runtime = build_runtime(settings, db_pool_size=1)
        except (ConfigError, CatalogError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        try:
            granter = runtime.granter
            if not isinstance(granter, IamGranter):  # build_runtime always makes one
                typer.echo("error: reconcile needs the IAM granter", err=True)
                raise typer.Exit(2)
            store = DbReconcileStore(runtime.service)
            try:
                findings = reconcile(
                    granter, store, now=runtime.clock.now(), dry_run=dry_run,
                    extra_principals=_tagged(runtime) if runtime.config.principal_tag_lookup
                    else (),
                    notifier=runtime.notifier,
                )
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
        finally:
            runtime.close()

        typer.echo(format_summary(findings))
        if dry_run:
            typer.echo("dry run: nothing was changed")
        for item in store.unverifiable:
            typer.echo(f"warning: grant {item.grant_id} (request #{item.request_id}) on "
                       f"{item.principal_arn} was not checked: {item.reason}", err=True)
        for conflict in store.conflicts:
            typer.echo(f"warning: {conflict}; run reconcile again", err=True)
        failed = [f for f in findings if f.error]
        if failed:
            typer.echo(f"error: {len(failed)} repair(s) failed; see the ERROR column",
                       err=True)
        if failed or store.unverifiable or store.conflicts:
            raise typer.Exit(1)


def _tagged(runtime: Runtime) -> Iterator[str]:
    """Principals tagged connect-access:* in the bot's account and in every account it
    reaches by assuming a role, so policies on them are checked even if no grant names
    them."""
    from bot.aws.principals import tagged_principals

    accounts = (None, *sorted({i.account for i in runtime.config.instances
                               if i.assume_role_arn}))
    for account in accounts:
        for arn, _tags in tagged_principals(runtime.aws.iam_for_account(account)):
            yield arn
