"""The web process: settings -> runtime -> Slack adapters -> the Bolt app, checked at start.

gunicorn builds the app in each worker with `gunicorn 'bot.slack.wsgi:create_app()'` (the
Procfile's `web:`); `connect-access serve` does the same for HTTP and Socket Mode. Everything
that can be checked before the first Slack request is checked here, and a fault stops the
process with a message naming the environment variable or the config key:

- SLACK_SIGNING_SECRET, SLACK_BOT_TOKEN (and SLACK_APP_TOKEN for Socket Mode) are set, and
  Slack (SLACK_API_URL) accepts the bot token (Bolt calls `auth.test` at construction);
- CONNECT_ACCESS_CONFIG names a valid operator file with at least one instance, and every
  tier (and override) that needs votes has an approval channel and enough approvers;
- DATABASE_URL is reachable and migrated to the latest schema.
"""

from __future__ import annotations

import logging
import urllib.error
from dataclasses import dataclass
from typing import TYPE_CHECKING

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.error import BoltError
from sqlalchemy import Engine

from bot.anchors import AnchorError
from bot.audit_runtime import build_anchoring
from bot.aws.errors import AwsConfigError
from bot.catalog import Catalog, CatalogError
from bot.config import ConfigError, OperatorConfig, Route
from bot.durations import format_duration
from bot.logs import configure_logging_from_environment, describe_database
from bot.ports import Clock
from bot.runtime import Runtime, web_runtime
from bot.settings import Settings, SettingsError, load_settings
from bot.slack.app import build_app, build_wsgi_app
from bot.slack.approvers import SlackApproverDirectory
from bot.slack.audit_listeners import AuditReviewDeps
from bot.slack.db_services import DbSlackServices
from bot.slack.health import HealthRoutes, readiness_checks

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

logger = logging.getLogger(__name__)

DEFAULT_LAZY_WORKERS = 8


class StartupError(Exception):
    """The web process cannot start; the message names the setting or key and the fix."""


@dataclass
class SlackWeb:
    """Everything the web process built; `close()` releases the database pool."""

    runtime: Runtime
    services: DbSlackServices
    approvers: SlackApproverDirectory
    app: App

    def wsgi(self) -> SlackRequestHandler:
        return build_wsgi_app(
            self.app, signing_secret=self.runtime.settings.slack_signing_secret or "socket-mode")

    def close(self) -> None:
        self.runtime.close()


def require_slack_settings(settings: Settings, *, socket_mode: bool = False) -> tuple[str, str]:
    """The signing secret and bot token, or StartupError naming what is missing."""
    if not settings.slack_bot_token:
        raise StartupError(
            "SLACK_BOT_TOKEN: not set; copy the Bot User OAuth Token (xoxb-...) from the "
            "Slack app's OAuth & Permissions page."
        )
    if socket_mode:
        if not settings.slack_app_token:
            raise StartupError(
                "SLACK_APP_TOKEN: not set; Socket Mode needs an app-level token (xapp-...) "
                "with the connections:write scope (Slack app > Basic Information > "
                "App-Level Tokens)."
            )
        # Socket Mode payloads arrive over an authenticated socket, unsigned.
        return settings.slack_signing_secret or "", settings.slack_bot_token
    if not settings.slack_signing_secret:
        raise StartupError(
            "SLACK_SIGNING_SECRET: not set; copy the Signing Secret from the Slack app's "
            "Basic Information page."
        )
    return settings.slack_signing_secret, settings.slack_bot_token


def check_routing(config: OperatorConfig, catalog: Catalog, source: str) -> None:
    """Every route a catalog entry can take must have an approval channel and enough
    approvers (unless auto-approved), or its requests would wait unseen until they time
    out. The fault names the tier or the override that gives the route."""
    router = config.router
    for entry in catalog:
        index = next((i for i, o in enumerate(router.overrides) if o.matches(entry)), None)
        path = f"routing.tiers.{entry.tier}" if index is None else f"routing.overrides[{index}]"
        _check_route(router.route_for(entry), path, source)


def _check_route(route: Route, path: str, source: str) -> None:
    if route.total_limit < route.max_duration:
        # An override's max_duration beyond its tier's max_total_duration: a request could
        # be granted for longer than the tier lets one last with all its extensions.
        raise ConfigError(source, f"{path}.max_duration",
                          f"{format_duration(route.max_duration)} is longer than the "
                          f"{format_duration(route.total_limit)} a {route.tier}-tier request "
                          "may last in total (max_total_duration); lower it or raise "
                          "max_total_duration")
    if route.auto_approve:
        return
    if not route.channel:
        raise ConfigError(source, f"{path}.channel",
                          "no approval channel is set, so nobody would see these requests; "
                          "set a Slack channel id like C0APPROVALS and invite the bot to it")
    if not route.approvers:
        raise ConfigError(source, f"{path}.approvers",
                          "no approvers are set, so these requests could never be approved; "
                          "list Slack user ids (U...) or user-group ids (S...)")
    if all(not a.startswith("S") for a in route.approvers) and route.approvals > len(
            set(route.approvers)):
        raise ConfigError(source, f"{path}.approvals",
                          f"needs {route.approvals} approvals but lists only "
                          f"{len(set(route.approvers))} approver(s); add approvers or lower it")


def check_database(engine: Engine) -> None:
    """The database answers and its schema is at the latest migration (bot.dbcheck)."""
    from bot.dbcheck import DatabaseNotReady, require_current_schema

    try:
        require_current_schema(engine, engine.url.render_as_string(hide_password=True))
    except DatabaseNotReady as exc:
        raise StartupError(f"DATABASE_URL: {exc}.") from None


def build_slack_web(
    settings: Settings,
    *,
    socket_mode: bool = False,
    clock: Clock | None = None,
    lazy_workers: int = DEFAULT_LAZY_WORKERS,
) -> SlackWeb:
    """Build and check the whole web process. Raises StartupError (settings, Slack,
    database) or ConfigError/CatalogError (operator config, catalog), all naming the fault."""
    signing_secret, bot_token = require_slack_settings(settings, socket_mode=socket_mode)
    if settings.connect_access_config is None:
        raise StartupError(
            "CONNECT_ACCESS_CONFIG: not set; point it at the operator YAML with instances, "
            "principals and approval routing (see deploy/connect-access.example.yaml)."
        )
    try:
        runtime = web_runtime(settings, clock=clock,
                              # lazy listeners each hold a connection for a moment
                              db_pool_size=lazy_workers)
    except AwsConfigError as exc:
        raise StartupError(f"CONNECT_ACCESS_CONFIG: instances: {exc}") from None
    directory = runtime.approvers
    assert isinstance(directory, SlackApproverDirectory)  # web_runtime wires Slack
    try:
        source = str(settings.connect_access_config)
        if not runtime.config.instances:
            raise ConfigError(source, "instances",
                              "no Amazon Connect instance is configured; add one with alias "
                              "and arn, or nobody can request access")
        check_routing(runtime.config, runtime.catalog, source)
        check_database(runtime.engine)
        services = DbSlackServices(runtime.service)
        audit = _audit_review(runtime, settings, directory)
        try:
            # Socket Mode payloads are not signed, so Bolt never checks the secret there;
            # build_app still wants a non-empty one.
            app = build_app(signing_secret=signing_secret or "socket-mode", bot_token=bot_token,
                            services=services, approvers=directory,
                            api_url=settings.slack_api_url, clock=runtime.clock,
                            lazy_workers=lazy_workers, audit=audit)
        except BoltError as exc:
            raise StartupError(
                f"SLACK_BOT_TOKEN: Slack at {settings.slack_api_url} refused the token "
                f"({exc}); check the token and that the app is installed in the workspace."
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise StartupError(
                f"SLACK_API_URL: cannot reach Slack at {settings.slack_api_url} ({exc})."
            ) from None
    except BaseException:
        runtime.close()
        raise
    return SlackWeb(runtime=runtime, services=services, approvers=directory, app=app)


def _audit_review(runtime: Runtime, settings: Settings,
                  directory: SlackApproverDirectory) -> AuditReviewDeps:
    """Audit review for `auditors:`, reading the anchors (checked now) for App Home."""
    try:
        anchoring = build_anchoring(runtime.config.audit, runtime.aws,
                                    slack_token=settings.slack_bot_token,
                                    slack_api_url=settings.slack_api_url)
    except AnchorError as exc:
        raise StartupError(f"CONNECT_ACCESS_CONFIG: {exc}") from None
    return AuditReviewDeps(
        sessions=runtime.sessions, clock=runtime.clock, auditors=runtime.config.auditors,
        directory=directory, signer=None if anchoring is None else anchoring.signer,
        reader=None if anchoring is None else anchoring.reader,
        retired=() if anchoring is None else anchoring.retired)


def load_slack_web(*, socket_mode: bool = False, lazy_workers: int = DEFAULT_LAZY_WORKERS
                   ) -> SlackWeb:
    """Settings from the environment, then `build_slack_web`; every fault is a
    StartupError whose message names the setting or config key."""
    try:
        settings = load_settings()
        return build_slack_web(settings, socket_mode=socket_mode, lazy_workers=lazy_workers)
    except SettingsError as exc:
        raise StartupError(f"invalid setting {exc}") from None
    except ConfigError as exc:
        raise StartupError(f"invalid operator config (CONNECT_ACCESS_CONFIG): {exc}") from None
    except CatalogError as exc:
        raise StartupError(f"invalid catalog (CONNECT_ACCESS_CATALOG): {exc}") from None


def with_health_routes(web: SlackWeb, app: WSGIApplication) -> HealthRoutes:
    """`app` behind GET /healthz and /readyz (bot.slack.health), which probe this web
    process's own database, config and catalog."""
    settings = web.runtime.settings
    database = describe_database(settings)
    return HealthRoutes(app, lambda: readiness_checks(
        web.runtime.engine, web.runtime.config, web.runtime.catalog, database))


def create_app(lazy_workers: int = DEFAULT_LAZY_WORKERS) -> WSGIApplication:
    """The gunicorn factory (`gunicorn 'bot.slack.wsgi:create_app()'`): one app per
    worker, so each has its own Bolt executor, Web API client and database pool; with the
    health probes in front. `lazy_workers` is how many listeners (votes, grants) one
    worker runs at once."""
    configure_logging_from_environment("web")
    try:
        web = load_slack_web(lazy_workers=lazy_workers)
    except StartupError as exc:
        # gunicorn prints the traceback too; this line is the one to read.
        logger.error("connect-access cannot start: %s", exc)
        raise
    return with_health_routes(web, web.wsgi())
