"""The `connect-access` command: wires settings, database and adapters; no business logic.

Each area registers its commands from its own module under bot/commands, so the command
line grows without this file becoming a second home for logic.
"""

from __future__ import annotations

import importlib

import typer

from bot import __version__
from bot.logs import configure_logging_from_environment

# Each module has `register(app: typer.Typer) -> None`.
COMMAND_MODULES = (
    "bot.commands.catalog_cmds",
    "bot.commands.db_cmds",
    "bot.commands.audit_cmds",
    "bot.commands.grants_cmds",
    "bot.commands.scheduler_cmds",
    "bot.commands.status_cmds",
    "bot.commands.check_cmds",
    "bot.commands.policy_cmds",
    "bot.commands.reconcile_cmds",
    "bot.commands.serve_cmds",
    "bot.commands.demo_cmds",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"connect-access {__version__}")
        raise typer.Exit()


def build_cli() -> typer.Typer:
    app = typer.Typer(
        name="connect-access",
        help="Just-in-time, time-boxed access to the Amazon Connect console.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", is_eager=True,
                                     callback=_print_version,
                                     help="Print the version and exit."),
    ) -> None:
        """Just-in-time, time-boxed access to the Amazon Connect console."""
        # One-off commands log warnings only unless LOG_LEVEL says otherwise; the
        # long-running ones (serve, scheduler) set their own default of INFO.
        configure_logging_from_environment("cli", default_level="WARNING")

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
    return app


def main() -> None:
    build_cli()(prog_name="connect-access")
