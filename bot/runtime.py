"""The composition root: one place that turns a Settings object into a running process.

There is one composition function per process kind, and each one wires Slack the same way
whenever SLACK_BOT_TOKEN is set (a Web API client on SLACK_API_URL, the user-group
directory, the notifier and the alerter):

- `web_runtime`        the Bolt web process (gunicorn workers, Socket Mode);
- `scheduler_runtime`  `connect-access scheduler`: expiry, reminders, timeouts, recovery of
                       stuck requests, scheduled reconcile;
- `cli_runtime`        a command that changes requests (`connect-access reconcile`).

Whatever one of them decides, it tells people itself; nothing depends on the web process
being up to deliver a scheduler's news. The Slack notifier reads requests through a
read-only port over the database (bot.slack.request_views), not through the RequestService
it notifies for, so it is built before the service and handed to it like any other port.

Where alerts go is decided once here (bot.alerts.alert_destination) and said once, in the
log, when the process starts.

Nothing here runs at import; `Runtime.close()` releases what a composition opened.
`build_runtime` is the common part, for tests that pass their own notifier or clock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from bot.alerts import AlertDestination, Alerter, LoggingAlerter, alert_destination
from bot.aws.identity_center import IdentityCenterGranter
from bot.aws.instance_resources import AttachedPolicyLookup, ConnectInstanceLookup
from bot.aws.principals import IamPrincipalDirectory
from bot.aws.sessions import AwsSessions
from bot.aws.target_granter import TargetGranter
from bot.catalog import Catalog, load_catalog
from bot.config import OperatorConfig, load_config
from bot.db import SessionFactory, make_engine, make_session_factory
from bot.evidence import NotificationRecorder
from bot.iamref import IamReference
from bot.lifecycle import PlanBuilder, RequestService
from bot.ports import (
    ApproverDirectory,
    Clock,
    Granter,
    Notification,
    Notifier,
    PrincipalDirectory,
    SystemClock,
)
from bot.settings import Settings
from bot.target_policy import target_plan_builder

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"



class LoggingNotifier:
    """The notifier when no Slack token is configured: every notification goes to the log,
    so nothing is silently dropped."""

    def notify(self, notification: Notification) -> None:
        log.info("notification %s for request %s: %s", notification.event,
                 notification.request_id, dict(notification.detail))


class DirectApproverDirectory:
    """Approvers named directly by Slack user id. User groups (S...) need Slack to expand,
    so without Slack they have no members (and a warning says so)."""

    def members(self, approver_ids: Sequence[str]) -> frozenset[str]:
        groups = [a for a in approver_ids if a.startswith("S")]
        if groups:
            log.warning("cannot expand Slack user groups %s without a Slack token",
                        ", ".join(groups))
        return frozenset(a for a in approver_ids if a.startswith(("U", "W")))


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: SessionFactory
    catalog: Catalog
    config: OperatorConfig
    clock: Clock
    aws: AwsSessions
    granter: Granter
    principals: PrincipalDirectory
    plan_builder: PlanBuilder
    approvers: ApproverDirectory
    notifier: Notifier
    service: RequestService
    alerter: Alerter
    alert_destination: AlertDestination
    # The Web API client (slack_sdk.WebClient) when SLACK_BOT_TOKEN was wired, else None.
    slack_client: Any = None

    def close(self) -> None:
        self.engine.dispose()


def build_runtime(
    settings: Settings,
    *,
    slack: bool = False,
    notifier: Notifier | None = None,
    approvers: ApproverDirectory | None = None,
    alerter: Alerter | None = None,
    clock: Clock | None = None,
    plan_builder: PlanBuilder | None = None,
    granter: Granter | None = None,
    db_pool_size: int = 5,
    min_duration: timedelta | None = None,
) -> Runtime:
    """Everything a process needs. Raises ConfigError/CatalogError for a bad operator
    config or catalog (the CLI prints them), before any connection is opened.

    With `slack=True` and SLACK_BOT_TOKEN set, the notifier, approver directory and
    alerter are Slack's (each unless given); otherwise notifications and alerts are
    logged. `min_duration` lowers the lifecycle's shortest grant (only the demo does, to
    show an expiry in seconds)."""
    catalog = load_catalog(settings.connect_access_catalog)
    config = load_config(settings.connect_access_config)
    clock = clock or SystemClock()
    aws = AwsSessions(settings.aws_region or DEFAULT_REGION, settings.aws_endpoint_url,
                      instances=config.instances, retry_mode=config.iam.retry_mode,
                      max_attempts=config.iam.max_attempts,
                      iam_requests_per_second=config.iam.requests_per_second,
                      iam_burst=config.iam.burst)
    granter = granter or make_granter(aws, config)
    principals = IamPrincipalDirectory(
        aws.iam_for_account, config.principals, tag_lookup=config.principal_tag_lookup,
        require_managed_tag=config.require_managed_tag,
        allow_group_targets=config.allow_group_targets,
        identity_center_user=(granter.identity_center.user_id
                              if isinstance(granter, TargetGranter) and granter.identity_center
                              else None),
        required_boundary=config.required_permissions_boundary,
        tag_lookup_accounts=(None, *sorted({i.account for i in config.instances
                                            if i.assume_role_arn})),
        index_max_age=config.timings.principal_index_max_age.total_seconds(),
        index_miss_refresh=config.timings.principal_index_miss_refresh.total_seconds(),
    )
    # The IAM reference loads its data per action on first use, so processes that never
    # grant (the scheduler) do not pay for it.
    role_ids = (granter if isinstance(granter, TargetGranter)
                else TargetGranter(aws.iam_for_principal)).role_unique_id
    # Grant-time look-ups (bot.aws.instance_resources): the instance's own resources
    # narrow the scope; a managed policy that denies the entry outright refuses the grant.
    plan_builder = plan_builder or target_plan_builder(
        catalog, IamReference(), role_unique_id=role_ids,
        instance_resources_for=ConnectInstanceLookup(
            aws, config.instances,
            directory_ids={i.arn: i.directory_id for i in config.instances if i.directory_id},
            replica_regions={i.arn: i.replica_regions for i in config.instances
                             if i.replica_regions}),
        attached_policies=AttachedPolicyLookup(aws.iam_for_principal))
    engine = make_engine(settings.database_url, **_pool_options(settings.database_url,
                                                                db_pool_size))
    sessions = make_session_factory(engine)
    wired = slack and bool(settings.slack_bot_token)
    destination = alert_destination(config, slack=wired)
    client: Any = None
    if wired:
        assert settings.slack_bot_token is not None
        client, slack_notifier, slack_approvers, slack_alerter = _slack_parts(
            settings.slack_bot_token, settings.slack_api_url, destination, sessions, catalog,
            config, clock)
        notifier = notifier or slack_notifier
        approvers = approvers or slack_approvers
        alerter = alerter or slack_alerter
    elif settings.slack_bot_token and notifier is None:
        log.warning("SLACK_BOT_TOKEN is set but this process was built without Slack; "
                    "notifications are logged only")
    notifier = notifier or LoggingNotifier()
    approvers = approvers or DirectApproverDirectory()
    alerter = alerter or LoggingAlerter()
    service = RequestService(
        sessions=sessions, catalog=catalog, config=config, granter=granter,
        notifier=notifier, approvers=approvers, principals=principals,
        clock=clock, plan_builder=plan_builder, alerter=alerter,
        pacing=aws if config.iam.requests_per_second is not None else None,
        queued_notice_after=config.iam.queued_notice_after,
    )
    if min_duration is not None:
        service.min_duration = min_duration
    if not isinstance(notifier, LoggingNotifier):
        # Each request's story (`audit show`) lists the notifications sent for it.
        service.notifier = NotificationRecorder(service.notifier, sessions, clock)
    return Runtime(settings=settings, engine=engine, sessions=sessions, catalog=catalog,
                   config=config, clock=clock, aws=aws, granter=granter,
                   principals=principals, plan_builder=plan_builder, approvers=approvers,
                   notifier=service.notifier, service=service, alerter=alerter,
                   alert_destination=destination, slack_client=client)


def _slack_parts(token: str, api_url: str, destination: AlertDestination,
                 sessions: SessionFactory, catalog: Catalog, config: OperatorConfig,
                 clock: Clock) -> tuple[Any, Notifier, ApproverDirectory, Alerter]:
    # Imported here: commands that never talk to Slack do not load slack_sdk.
    from bot.slack.alerter import SlackAlerter
    from bot.slack.approvers import SlackApproverDirectory
    from bot.slack.notifier import SlackNotifier
    from bot.slack.request_views import DbRequestViews
    from bot.slack.webapi import build_web_client

    client = build_web_client(token, api_url)
    views = DbRequestViews(sessions, catalog, config.router, config.identity_center)
    return (client, SlackNotifier(client, views, views, clock=clock),
            SlackApproverDirectory(client), SlackAlerter(client, destination.channel))


def _announce(runtime: Runtime, process: str) -> Runtime:
    # The configured case says nothing at INFO (one start-up line per process); the
    # fallbacks warn.
    level = logging.DEBUG if runtime.config.alerts.channel else logging.WARNING
    log.log(level, "%s: %s", process, runtime.alert_destination.explanation)
    return runtime


def web_runtime(settings: Settings, *, clock: Clock | None = None, db_pool_size: int = 8,
                min_duration: timedelta | None = None) -> Runtime:
    """The web process (its lazy listeners each hold a connection for a moment, so the
    pool is sized for them)."""
    return _announce(build_runtime(settings, slack=True, clock=clock,
                                   db_pool_size=db_pool_size, min_duration=min_duration),
                     "web")


def scheduler_runtime(settings: Settings, *, db_pool_size: int = 12,
                      clock: Clock | None = None) -> Runtime:
    """`connect-access scheduler`: its loop and revoke threads each hold a connection."""
    return _announce(build_runtime(settings, slack=True, db_pool_size=db_pool_size,
                                   clock=clock), "scheduler")


def cli_runtime(settings: Settings) -> Runtime:
    """A command that changes requests (reconcile): one connection, Slack when configured,
    so a requester whose grant it ends hears of it like from any other process."""
    return _announce(build_runtime(settings, slack=True, db_pool_size=1), "cli")


def make_granter(aws: AwsSessions, config: OperatorConfig) -> TargetGranter:
    """The granter for every kind of target the config can map: IAM principals and shared
    roles always, Identity Center users when `identity_center:` is configured."""
    identity_center = None
    if config.identity_center is not None:
        identity_center = IdentityCenterGranter(
            lambda: aws.client("sso-admin"), lambda: aws.client("identitystore"),
            instance_arn=config.identity_center.instance_arn,
            identity_store_id=config.identity_center.identity_store_id,
            permissions_boundary=config.required_permissions_boundary,
        )
    return TargetGranter(aws.iam_for_principal, identity_center=identity_center)


def _pool_options(database_url: str, pool_size: int) -> dict[str, int | float]:
    # Threads revoking in parallel each hold a connection for a moment; size the pool for
    # them so they queue on IAM, not on the pool.
    if database_url.startswith("sqlite"):
        return {}
    return {"pool_size": pool_size, "max_overflow": pool_size, "pool_timeout": 60.0}

