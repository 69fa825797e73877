"""`connect-access demo`: the whole product end to end on this machine, nothing configured."""

from __future__ import annotations

import importlib.util
import logging

import typer

from bot.sandbox.demo import MAX_GRANT_SECONDS, MIN_GRANT_SECONDS, run_demo

# moto's HTTP server plays AWS in the demo; it and its web stack are the `demo` extra, not
# part of a production install.
SANDBOX_MODULES = ("moto", "flask", "werkzeug", "flask_cors")
SANDBOX_HINT = ("`connect-access demo` needs the sandbox packages, which a production install "
                "leaves out: pip install 'connect-access[demo]' (in a checkout, `make demo` "
                "installs them)")


def missing_sandbox_modules() -> list[str]:
    return [name for name in SANDBOX_MODULES if importlib.util.find_spec(name) is None]


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        grant_seconds: int = typer.Option(
            60, "--grant-seconds", min=MIN_GRANT_SECONDS, max=MAX_GRANT_SECONDS,
            help="How long alice's access lasts before the scheduler revokes it."),
        keep: bool = typer.Option(
            False, "--keep",
            help="Keep the demo database afterwards (for `connect-access audit export`)."),
        port: int = typer.Option(
            0, "--port", min=0, max=65535,
            help="Port for the Bolt app on 127.0.0.1 (0 picks a free one)."),
        identity_center: bool = typer.Option(
            False, "--identity-center",
            help="alice is an IAM Identity Center user: she gets a permission set of her "
                 "own, assigned on the instance's account, removed at expiry."),
    ) -> None:
        """Run the bot for real with zero configuration: SQLite, moto as AWS, a fake Slack,
        the Bolt app over HTTP and the scheduler. alice asks for "Edit chat transcripts",
        bob approves, the policy lands in IAM and is revoked at expiry, and the audit trail
        is verified. Exits non-zero, naming the step, if any step fails."""
        missing = missing_sandbox_modules()
        if missing:
            typer.echo(f"error: {SANDBOX_HINT} (missing: {', '.join(missing)})", err=True)
            raise typer.Exit(2)
        # Warnings from the bot (a listener failing, a notification not delivered) explain
        # a failed step; routine INFO lines would drown the conversation.
        logging.basicConfig(level=logging.WARNING,
                            format="  (log) %(levelname)s %(name)s: %(message)s", force=True)
        try:
            result = run_demo(grant_seconds=grant_seconds, keep=keep, port=port,
                              identity_center=identity_center)
        except KeyboardInterrupt:
            typer.echo("demo interrupted; everything it started has been stopped.", err=True)
            raise typer.Exit(130) from None
        raise typer.Exit(result.exit_code)
