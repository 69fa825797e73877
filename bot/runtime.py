"""The composition root for long-running commands (scheduler, web, demo): one place that
turns a Settings object into the engine, the operator config, the AWS adapters, the
policy-compiling plan builder and the RequestService built on them.

Nothing here runs at import; `build_runtime(settings)` builds, `Runtime.close()` releases.
The notifier and the approver directory are injectable because they belong to Slack: the
web process and the demo pass a `notifier_factory` (the Slack notifier reads requests
through the RequestService it notifies for, so it can only be made once that exists),
commands and tests with a ready notifier pass `notifier=`, and without either the default
notifier only logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from bot.aws.granter import IamGranter
from bot.aws.principals import IamPrincipalDirectory
from bot.aws.sessions import AwsSessions
from bot.catalog import Catalog, load_catalog
from bot.config import OperatorConfig, load_config
from bot.db import SessionFactory, make_engine, make_session_factory
from bot.evidence import NotificationRecorder
from bot.iamref import IamReference
from bot.lifecycle import PlanBuilder, RequestService
from bot.policy import plan_builder as policy_plan_builder
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

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"

NotifierFactory = Callable[[RequestService], Notifier]
"""Makes the notifier for the RequestService it will be given to."""


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

    def close(self) -> None:
        self.engine.dispose()


def build_runtime(
    settings: Settings,
    *,
    notifier: Notifier | None = None,
    notifier_factory: NotifierFactory | None = None,
    approvers: ApproverDirectory | None = None,
    clock: Clock | None = None,
    plan_builder: PlanBuilder | None = None,
    granter: Granter | None = None,
    db_pool_size: int = 5,
    min_duration: timedelta | None = None,
) -> Runtime:
    """Everything a long-running command needs. Raises ConfigError/CatalogError for a bad
    operator config or catalog (the CLI prints them), before any connection is opened.

    Give `notifier` when it exists already, or `notifier_factory` when it needs the
    RequestService (the Slack notifier does); not both. `min_duration` lowers the
    lifecycle's shortest grant (only the demo does, to show an expiry in seconds)."""
    if notifier is not None and notifier_factory is not None:
        raise TypeError("build_runtime takes notifier or notifier_factory, not both")
    catalog = load_catalog(settings.connect_access_catalog)
    config = load_config(settings.connect_access_config)
    clock = clock or SystemClock()
    aws = AwsSessions(settings.aws_region or DEFAULT_REGION, settings.aws_endpoint_url,
                      instances=config.instances, retry_mode=config.iam.retry_mode,
                      max_attempts=config.iam.max_attempts,
                      iam_requests_per_second=config.iam.requests_per_second,
                      iam_burst=config.iam.burst)
    granter = granter or IamGranter(aws.iam_for_principal)
    principals = IamPrincipalDirectory(
        aws.iam_for_account, config.principals, tag_lookup=config.principal_tag_lookup,
        require_managed_tag=config.require_managed_tag,
        tag_lookup_accounts=(None, *sorted({i.account for i in config.instances
                                            if i.assume_role_arn})),
    )
    # The IAM reference loads its data per action on first use, so processes that never
    # grant (the scheduler) do not pay for it.
    plan_builder = plan_builder or policy_plan_builder(catalog, IamReference())
    if notifier is None and notifier_factory is None and settings.slack_bot_token:
        log.warning("SLACK_BOT_TOKEN is set but this process was given no Slack "
                    "notifier; notifications are logged only")
    approvers = approvers or DirectApproverDirectory()
    engine = make_engine(settings.database_url, **_pool_options(settings.database_url,
                                                                db_pool_size))
    sessions = make_session_factory(engine)
    service = RequestService(
        sessions=sessions, catalog=catalog, config=config, granter=granter,
        # Until the factory has made the real notifier, nothing is dropped silently.
        notifier=notifier or LoggingNotifier(), approvers=approvers, principals=principals,
        clock=clock, plan_builder=plan_builder,
        pacing=aws if config.iam.requests_per_second is not None else None,
        queued_notice_after=config.iam.queued_notice_after,
    )
    if min_duration is not None:
        service.min_duration = min_duration
    if notifier_factory is not None:
        service.notifier = notifier_factory(service)
    if notifier is not None or notifier_factory is not None:
        # Each request's story (`audit show`) lists the notifications sent for it.
        service.notifier = NotificationRecorder(service.notifier, sessions, clock)
    return Runtime(settings=settings, engine=engine, sessions=sessions, catalog=catalog,
                   config=config, clock=clock, aws=aws, granter=granter,
                   principals=principals, plan_builder=plan_builder, approvers=approvers,
                   notifier=service.notifier, service=service)


def _pool_options(database_url: str, pool_size: int) -> dict[str, int | float]:
    # Threads revoking in parallel each hold a connection for a moment; size the pool for
    # them so they queue on IAM, not on the pool.
    if database_url.startswith("sqlite"):
        return {}
    return {"pool_size": pool_size, "max_overflow": pool_size, "pool_timeout": 60.0}

