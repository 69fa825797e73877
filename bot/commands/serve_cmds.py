"""`connect-access serve`: the Slack app over HTTP (gunicorn) or Socket Mode.

HTTP: gunicorn runs in this process (its arbiter, `--workers` forked workers with
`--threads` threads each), every worker building the app with bot.slack.wsgi.create_app(),
the same factory as the Procfile's `web:`. Before any worker starts, the whole app is built
once here and thrown away, so a bad setting or config key stops the command with one clear
line instead of a worker boot loop.
"""

from __future__ import annotations

import logging
from typing import Any

import typer

from bot.slack.wsgi import StartupError, load_slack_web

DEFAULT_PORT = 3000


def _preflight(socket_mode: bool) -> None:
    try:
        load_slack_web(socket_mode=socket_mode).close()
    except StartupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def serve_http(host: str, port: int, workers: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    from bot.slack.wsgi import create_app

    class ConnectAccessServer(BaseApplication):  # type: ignore[misc]  # gunicorn is untyped
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"{host}:{port}",
                "workers": workers,
                "threads": threads,
                "worker_class": "gthread",
                # Slack waits 3 s for an ack; a request still running after 30 s is stuck.
                "timeout": 30,
                "graceful_timeout": 20,
                "proc_name": "connect-access-web",
                # gunicorn's control socket sits at one fixed path per user, so two servers
                # on a host would fight over it; the bot does not use it.
                "control_socket_disable": True,
            }
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Any:
            return create_app()

    ConnectAccessServer().run()


def serve_socket_mode() -> None:
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s [socket mode] %(name)s: %(message)s")
    try:
        web = load_slack_web(socket_mode=True)
    except StartupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    app_token = web.runtime.settings.slack_app_token
    assert app_token is not None  # load_slack_web(socket_mode=True) checked it
    try:
        SocketModeHandler(web.app, app_token).start()  # type: ignore[no-untyped-call]
    finally:
        web.close()


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to bind (0.0.0.0 to accept outside traffic)."),
        port: int = typer.Option(DEFAULT_PORT, "--port", envvar="PORT", min=1, max=65535,
                                 help="Port to bind (default: $PORT, else 3000)."),
        workers: int = typer.Option(2, "--workers", min=1, max=64,
                                    help="gunicorn worker processes."),
        threads: int = typer.Option(8, "--threads", min=1, max=64,
                                    help="Threads per worker (concurrent Slack requests)."),
        socket_mode: bool = typer.Option(
            False, "--socket-mode",
            help="Connect out to Slack over Socket Mode (SLACK_APP_TOKEN) instead of "
                 "serving HTTP; for development."),
    ) -> None:
        """Serve the Slack app: commands, interactivity and events on /slack/events."""
        if socket_mode:
            serve_socket_mode()
            return
        _preflight(socket_mode=False)
        typer.echo(f"serving Slack on http://{host}:{port}/slack/events "
                   f"({workers} worker(s) x {threads} thread(s))", err=True)
        serve_http(host, port, workers, threads)
