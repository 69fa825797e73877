"""The composition root for long-running commands (scheduler, web, demo): one place that
turns a Settings object into the engine, the operator config, the AWS adapters, the
policy-compiling plan builder and the RequestService built on them.

Nothing here runs at import; `build_runtime(settings)` builds, `Runtime.close()` releases.
The notifier and the approver directory are injectable because they belong to Slack: the
web process passes its Slack adapters, tests pass in-memory ones, and without a Slack token
the default notifier only logs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine

from bot.aws.granter import IamGranter
from bot.aws.principals import IamPrincipalDirectory
from bot.aws.sessions import AwsSessions
from bot.catalog import Catalog, load_catalog
from bot.config import OperatorConfig, load_config
from bot.db import SessionFactory, make_engine, make_session_factory
from bot.iamref import IamReference
from bot.lifecycle import GrantContext, PlanBuilder, RequestService
from bot.ports import (
    ApproverDirectory,
    Clock,
    Granter,
    GrantPlan,
    Notification,
    Notifier,
    PrincipalDirectory,
    SystemClock,
)
from bot.settings import Settings

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


class PolicyPlanBuilder:
    """The lifecycle's PlanBuilder: runs the policy compiler for one GrantContext. The IAM
    reference data is loaded on first use, so processes that never grant (the scheduler)
    do not pay for it."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._iam: IamReference | None = None
        self._lock = threading.Lock()

    def _reference(self) -> IamReference:
        with self._lock:
            if self._iam is None:
                self._iam = IamReference()
            return self._iam

    def __call__(self, context: GrantContext) -> GrantPlan:
        from bot.policy import compile_policy

        compiled = compile_policy(
            self.catalog, context.entry_id, context.principal_arn,
            grant_id=context.grant_id, start=context.start,
            duration=context.expires_at - context.start,
            # The lifecycle checked the tier maximum when the request (or extension) was
            # made; an extended grant may rightly run longer than one tier maximum.
            max_duration=None,
            iam=self._reference(), instance_arn=context.instance_arn,
            existing_inline_chars=context.inline_usage,
        )
        return compiled.to_plan()


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
    approvers: ApproverDirectory | None = None,
    clock: Clock | None = None,
    plan_builder: PlanBuilder | None = None,
    granter: Granter | None = None,
    db_pool_size: int = 5,
) -> Runtime:
    """Everything a long-running command needs. Raises ConfigError/CatalogError for a bad
    operator config or catalog (the CLI prints them), before any connection is opened."""
    catalog = load_catalog(settings.connect_access_catalog)
    config = load_config(settings.connect_access_config)
    clock = clock or SystemClock()
    aws = AwsSessions(settings.aws_region or DEFAULT_REGION, settings.aws_endpoint_url,
                      instances=config.instances)
    granter = granter or IamGranter(aws.iam_for_principal)
    principals = IamPrincipalDirectory(
        aws.iam_for_account, config.principals, tag_lookup=config.principal_tag_lookup,
        require_managed_tag=config.require_managed_tag,
        tag_lookup_accounts=(None, *sorted({i.account for i in config.instances
                                            if i.assume_role_arn})),
    )
    plan_builder = plan_builder or PolicyPlanBuilder(catalog)
    if notifier is None:
        if settings.slack_bot_token:
            log.warning("SLACK_BOT_TOKEN is set but this process was given no Slack "
                        "notifier; notifications are logged only")
        notifier = LoggingNotifier()
    approvers = approvers or DirectApproverDirectory()
    engine = make_engine(settings.database_url, **_pool_options(settings.database_url,
                                                                db_pool_size))
    sessions = make_session_factory(engine)
    service = RequestService(
        sessions=sessions, catalog=catalog, config=config, granter=granter,
        notifier=notifier, approvers=approvers, principals=principals, clock=clock,
        plan_builder=plan_builder,
    )
    return Runtime(settings=settings, engine=engine, sessions=sessions, catalog=catalog,
                   config=config, clock=clock, aws=aws, granter=granter,
                   principals=principals, plan_builder=plan_builder, approvers=approvers,
                   notifier=notifier, service=service)


def _pool_options(database_url: str, pool_size: int) -> dict[str, int | float]:
    # Threads revoking in parallel each hold a connection for a moment; size the pool for
    # them so they queue on IAM, not on the pool.
    if database_url.startswith("sqlite"):
        return {}
    return {"pool_size": pool_size, "max_overflow": pool_size, "pool_timeout": 60.0}

