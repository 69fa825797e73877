"""`connect-access serve`: the Slack app over HTTP (gunicorn) or Socket Mode.

Socket Mode: the same app, built by bot.slack.wsgi.load_slack_web(socket_mode=True), fed
by slack_bolt's builtin SocketModeHandler over a WebSocket that apps.connections.open (on
SLACK_API_URL, with SLACK_APP_TOKEN) hands out. A refused token or an unreachable Slack
ends the command with one line naming the setting; SIGTERM and SIGINT stop it cleanly.

HTTP: gunicorn runs in this process (its arbiter, `--workers` forked workers with
`--threads` threads each), every worker building the app with bot.slack.wsgi.create_app(),
the same factory as the Procfile's `web:`. Before any worker starts, the whole app is built
once here and thrown away, so a bad setting or config key stops the command with one clear
line instead of a worker boot loop.
"""

from __future__ import annotations

import logging
import signal
import threading
import urllib.error
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import typer

from bot.logs import configure_logging_from_environment, startup_line
from bot.slack.wsgi import DEFAULT_LAZY_WORKERS, SlackWeb, StartupError, load_slack_web

if TYPE_CHECKING:
    from slack_sdk import WebClient

DEFAULT_PORT = 3000


def _preflight(socket_mode: bool) -> None:
    try:
        load_slack_web(socket_mode=socket_mode).close()
    except StartupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def serve_http(host: str, port: int, workers: int, threads: int,
               lazy_workers: int = DEFAULT_LAZY_WORKERS) -> None:
    from gunicorn.app.base import BaseApplication

    from bot import gunicorn_conf
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
                # The Procfile's --config python:bot.gunicorn_conf: logging and the one
                # start-up line.
                "logger_class": gunicorn_conf.logger_class,
                "when_ready": gunicorn_conf.when_ready,
            }
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Any:
            return create_app(lazy_workers=lazy_workers)

    ConnectAccessServer().run()


class _Stop(BaseException):
    """SIGTERM or SIGINT: leave whatever the main thread is doing and shut down. A
    BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def open_socket_url(client: WebClient, app_token: str, api_url: str) -> str:
    """A WebSocket URL from `apps.connections.open` on SLACK_API_URL, or StartupError
    naming the setting at fault."""
    from slack_sdk.errors import SlackApiError

    try:
        return str(client.apps_connections_open(app_token=app_token)["url"])
    except SlackApiError as exc:
        error = exc.response.get("error", "unknown_error")
        raise StartupError(
            f"SLACK_APP_TOKEN: Slack at {api_url} refused the app-level token ({error}); "
            "generate one with the connections:write scope (Slack app > Basic Information > "
            "App-Level Tokens) and turn Socket Mode on for the app."
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise StartupError(f"SLACK_API_URL: cannot reach Slack at {api_url} "
                           f"for apps.connections.open ({exc}).") from None


def serve_socket_mode() -> None:
    """Connect out to Slack and serve until SIGTERM or SIGINT. The Web API calls, including
    apps.connections.open, go to SLACK_API_URL through the app's own client."""
    configure_logging_from_environment("web")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = ({sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
                if in_main_thread else {})
    failure: str | None = None
    try:
        failure = _serve_socket_mode()
    except _Stop as stop:  # a second signal while shutting down
        typer.echo(f"{stop}: stopping", err=True)
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)
    if failure is not None:
        typer.echo(f"error: {failure}", err=True)
        raise typer.Exit(2)


def _serve_socket_mode() -> str | None:
    """Serve until a signal. Returns why it could not start, once everything it started
    has stopped, so that the reason is the last line printed."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    web: SlackWeb | None = None
    handler: SocketModeHandler | None = None
    try:
        try:
            web = load_slack_web(socket_mode=True)
            api_url = web.runtime.settings.slack_api_url
            app_token = web.runtime.settings.slack_app_token
            assert app_token is not None  # load_slack_web(socket_mode=True) checked it
            url = open_socket_url(web.app.client, app_token, api_url)
        except StartupError as exc:
            return str(exc)
        # No reconnecting in the background before the first connection is up: a socket
        # that cannot be opened must stop the command, not be retried forever.
        handler = SocketModeHandler(web.app, app_token, web_client=web.app.client,
                                    auto_reconnect_enabled=False)
        handler.client.wss_uri = url  # connect() uses it instead of asking for another one
        handler.connect()  # type: ignore[no-untyped-call]
        if not handler.client.is_connected():
            return (f"SLACK_API_URL: Slack at {api_url} answered apps.connections.open, but "
                    f"the WebSocket at {urlsplit(url).netloc or url} could not be opened "
                    "(slack_sdk logged the reason above).")
        handler.client.default_auto_reconnect_enabled = True
        handler.client.auto_reconnect_enabled = True
        # The one start-up line, in LOG_FORMAT like every process's.
        logging.getLogger("bot.web").info(startup_line(
            "web", web.runtime.settings,
            f"connected to Slack over Socket Mode (Web API {api_url}); SIGTERM or Ctrl-C "
            "stops"))
        threading.Event().wait()
    except _Stop as stop:
        typer.echo(f"{stop}: stopping", err=True)
    finally:
        if handler is not None:
            handler.close()  # type: ignore[no-untyped-call]
        if web is not None:
            # Let listeners already running finish before their database goes away.
            web.app.listener_runner.listener_executor.shutdown(wait=True)
            web.close()
    return None


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to bind (0.0.0.0 to accept outside traffic)."),
        port: int = typer.Option(DEFAULT_PORT, "--port", envvar="PORT", min=1, max=65535,
                                 help="Port to bind (default: $PORT, else 3000)."),
        workers: int = typer.Option(2, "--workers", min=1, max=64,
                                    help="gunicorn worker processes."),
        # Every ack is CPU only (database, IAM and Web API work runs in lazy listeners),
        # so threads beyond a few only contend for the GIL.
        threads: int = typer.Option(4, "--threads", min=1, max=64,
                                    help="Threads per worker (concurrent Slack requests)."),
        lazy_workers: int = typer.Option(
            DEFAULT_LAZY_WORKERS, "--lazy-workers", min=1, max=256,
            help="Listeners (votes, grants, modals) each worker runs at once after the ack; "
                 "a burst beyond them waits its turn."),
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
        serve_http(host, port, workers, threads, lazy_workers)
