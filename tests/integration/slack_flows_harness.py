"""The Slack app on the real core, end to end: signed HTTP requests from the sandbox's
SlackClient/SlackDriver to the Bolt app built by bot.slack.wsgi (the web process's own
composition: DbSlackServices over the real RequestService, the policy compiler, the real
IamGranter), with IAM served by moto's HTTP server, Slack by the in-package FakeSlack, and
the database on SQLite and PostgreSQL (tests/conftest.py's `database_url`).

Nothing is replaced: what a test checks in IAM is read back from moto through boto3, what
it checks in Slack is what FakeSlack recorded, what it checks in the database is the rows.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer
from sqlalchemy import func, select

from bot.models import AccessRequest, AuditEvent, Grant, Vote
from bot.sandbox.fake_slack import FakeSlack, Message, ResponsePost
from bot.sandbox.slack_client import AppServer, HttpResult, SlackClient, SlackDriver
from bot.settings import Settings, load_settings
from bot.slack.services import RequestView
from bot.slack.wsgi import SlackWeb, build_slack_web

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
SIGNING_SECRET = "flows-signing-secret"
INSTANCE_ARN = f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/11111111-2222-3333-4444-555555555555"

ALICE, BOB, CAROL, DAVE, ERIN, CISO = "U0ALICE", "U0BOB", "U0CAROL", "U0DAVE", "U0ERIN", "U0CISO"
LEADS = tuple(f"U0LEAD{i:02d}" for i in range(1, 21))
APPROVALS, SECURITY = "C0APPROVALS", "C0SECURITY"
ROLES = {ALICE: "alice-admin", BOB: "bob-admin"}

WRITE_ENTRY = "Update Amazon Polly option"  # write tier: 1 approval from S0LEADS, 4h max
CRITICAL_ENTRY = "Edit chat transcripts"  # critical tier: 2 of S0SECURITY + U0CISO, 1h max


def operator_config() -> dict[str, Any]:
    return {
        "instances": [{"alias": "prod", "arn": INSTANCE_ARN}],
        "principals": {user: f"arn:aws:iam::{ACCOUNT}:role/{role}" for user, role in ROLES.items()},
        "routing": {
            "tiers": {
                "read": {"channel": APPROVALS, "approvers": ["S0LEADS"], "approvals": 1},
                "write": {"channel": APPROVALS, "approvers": ["S0LEADS"], "approvals": 1},
                "critical": {"channel": SECURITY, "approvers": ["S0SECURITY", CISO],
                             "approvals": 2},
            },
        },
    }


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_url: str, fake_aws_credentials: None) -> str:
    """Fake credentials (tests/integration/conftest.py), a fresh moto, and the requesters'
    IAM roles in it."""
    urllib.request.urlopen(
        urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10
    ).close()
    iam = boto3.client("iam", region_name=REGION, endpoint_url=moto_url)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "sts:AssumeRole"}]})
    for role in ROLES.values():
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)
    return moto_url


@dataclass
class Flows:
    """One running web process and the means to look at everything it touched."""

    fake: FakeSlack
    client: SlackClient
    driver: SlackDriver
    web: SlackWeb
    iam: Any  # a boto3 IAM client on moto, separate from the bot's

    # -- Slack ----------------------------------------------------------------------------

    def command(self, user: str, text: str) -> ResponsePost:
        return self.driver.command(user, text)

    def request(self, user: str = ALICE, text: str = WRITE_ENTRY,
                reason: str = "Customer escalation INC-42", seconds: int = 3600) -> Message:
        """Request through the modal; returns the approval message posted for it."""
        return self.driver.request(user, text, instance="prod", seconds=seconds,
                                   reason=reason)[1]

    def click(self, user: str, message: Message, action_id: str,
              value: str | None = None) -> HttpResult:
        return self.driver.click_message(user, message, action_id, value)

    def message_now(self, message: Message) -> Message:
        return self.fake.message(message.channel, message.ts)

    def shown(self, message: Message) -> str:
        return json.dumps(self.message_now(message).blocks)

    def wait_for_shown(self, message: Message, text: str) -> str:
        shown: str = self.fake.wait_for(
            lambda f: text in (s := json.dumps(f.message(message.channel, message.ts).blocks))
            and s,
            what=f"the approval message to show {text!r}",
        )
        return shown

    def wait_for_ephemerals(self, user: str, count: int) -> list[str]:
        found: list[str] = self.fake.wait_for(
            lambda f: len(texts := [e.text for e in f.ephemerals(user)]) >= count and texts,
            what=f"{count} ephemeral message(s) to {user}",
        )
        return found

    # -- the core -------------------------------------------------------------------------

    def view(self, request_id: int) -> RequestView:
        return self.web.services.request_view(request_id)

    def counts(self) -> dict[str, int]:
        """Rows per table that any state change would add to."""
        with self.web.runtime.sessions() as session:
            return {
                model.__tablename__: int(
                    session.execute(select(func.count()).select_from(model)).scalar_one())
                for model in (AccessRequest, Vote, Grant, AuditEvent)
            }

    def grants(self, request_id: int) -> list[Grant]:
        with self.web.runtime.sessions() as session:
            return list(session.execute(
                select(Grant).where(Grant.request_id == request_id)).scalars())

    def sweep(self, after: timedelta) -> list[str]:
        """The scheduler's sweep, run as if `after` had passed."""
        now = datetime.now(UTC) + after
        return [o.state for o in self.web.runtime.service.revoke_due_batch(now)]

    # -- IAM ------------------------------------------------------------------------------

    def inline_policies(self, user: str = ALICE) -> dict[str, dict[str, Any]]:
        role = ROLES[user]
        names = self.iam.list_role_policies(RoleName=role)["PolicyNames"]
        return {
            name: self.iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
            for name in names
        }


def current_time_bounds(document: dict[str, Any]) -> set[str]:
    """Every aws:CurrentTime upper bound in a policy (its time box)."""
    bounds = set()
    for statement in document["Statement"]:
        condition = statement.get("Condition") or {}
        for operator in ("DateLessThan", "DateLessThanEquals"):
            value = (condition.get(operator) or {}).get("aws:CurrentTime")
            if value:
                bounds.add(value)
    return bounds


def make_settings(database_url: str, config_path: Path, fake: FakeSlack, aws_url: str
                  ) -> Settings:
    return load_settings(
        database_url=database_url,
        connect_access_config=config_path,
        slack_bot_token=fake.bot_token,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=fake.api_url,
        aws_region=REGION,
        aws_endpoint_url=aws_url,
    )


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "connect-access.yaml"
    path.write_text(yaml.safe_dump(operator_config()))
    return path


@pytest.fixture
def flows(database_url: str, aws_env: str, config_path: Path) -> Iterator[Flows]:
    with running_flows(database_url, aws_env, config_path) as running:
        yield running


@contextmanager
def running_flows(database_url: str, aws_env: str, config_path: Path) -> Iterator[Flows]:
    """The web process on the operator config at `config_path` (for tests that need a
    config other than operator_config())."""
    groups = {"S0LEADS": [BOB, CAROL, *LEADS], "S0SECURITY": [CAROL, ERIN]}
    with FakeSlack(usergroups=groups) as fake:
        web = build_slack_web(make_settings(database_url, config_path, fake, aws_env))
        try:
            with AppServer(web.wsgi()) as server:
                client = SlackClient(server.url, SIGNING_SECRET,
                                     response_url_factory=fake.response_url)
                iam = boto3.client("iam", region_name=REGION, endpoint_url=aws_env)
                yield Flows(fake, client, SlackDriver(fake, client, timeout=10.0), web, iam)
        finally:
            web.close()
