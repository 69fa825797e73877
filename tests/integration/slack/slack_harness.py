"""Harness for the Slack tests: the Slack app served over real HTTP on 127.0.0.1, driven by
signed requests, talking to the fake Slack Web API. Behind it is the web process's own
composition (bot.slack.wsgi.build_slack_web: DbSlackServices over the real RequestService)
on a migrated SQLite database, with IAM served by moto, so these tests check the rules that
ship. It reuses tests/integration/slack_flows_harness.py (the end-to-end harness) for the
running process. A module of its own (not conftest) so its name never clashes with another
test directory's conftest."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from slack_flows_harness import (
    ACCOUNT,
    ALICE,
    APPROVALS,
    BOB,
    CAROL,
    CISO,
    CRITICAL_ENTRY,
    DAVE,
    ERIN,
    REGION,
    SECURITY,
    SIGNING_SECRET,
    WRITE_ENTRY,
    Flows,
    operator_config,
    running_flows,
)

from bot.sandbox.fake_slack import FakeSlack, Message, ResponsePost
from bot.sandbox.slack_client import HttpResult, SlackClient, SlackDriver
from bot.slack.db_services import DbSlackServices

__all__ = [
    "ALICE",
    "APPROVALS",
    "BOB",
    "CAROL",
    "CISO",
    "CRITICAL_ENTRY",
    "DAVE",
    "ERIN",
    "SECURITY",
    "SIGNING_SECRET",
    "WRITE_ENTRY",
    "SlackEnvFactory",
    "slack_config",
]

# Requesters beyond the end-to-end harness's ALICE and BOB, with roles in IAM.
EXTRA_ROLES = {CAROL: "carol-admin", DAVE: "dave-admin", ERIN: "erin-admin"}


def slack_config() -> dict[str, Any]:
    """The operator config the Slack tests run on (tests may change a copy)."""
    config = operator_config()
    config["instances"].append({"alias": "staging", "arn": f"arn:aws:connect:{REGION}:{ACCOUNT}:"
                                "instance/66666666-7777-8888-9999-000000000000"})
    config["principals"].update({
        user: f"arn:aws:iam::{ACCOUNT}:role/{role}"
        for user, role in EXTRA_ROLES.items()
    })
    return config


@dataclass
class SlackEnv:
    flows: Flows

    @property
    def fake(self) -> FakeSlack:
        return self.flows.fake

    @property
    def client(self) -> SlackClient:
        return self.flows.client

    @property
    def driver(self) -> SlackDriver:
        return self.flows.driver

    @property
    def services(self) -> DbSlackServices:
        return self.flows.web.services

    def command(self, user: str, text: str) -> ResponsePost:
        return self.driver.command(user, text)

    def response_to(self, url: str) -> ResponsePost:
        return self.driver.response_to(url)

    def open_request_modal(self, user: str, text: str) -> dict[str, Any]:
        return self.driver.open_request_modal(user, text)[1]

    def submit(self, user: str, view: dict[str, Any], values: dict[str, str]) -> HttpResult:
        return self.driver.submit(user, view, values)

    def request(
        self, user: str = ALICE, text: str = WRITE_ENTRY, reason: str = "Customer escalation INC-42",
        seconds: int = 3600,
    ) -> Message:
        """Request access through the modal; returns the approval message it produced."""
        return self.driver.request(user, text, instance="prod", seconds=seconds, reason=reason)[1]

    def click_message(self, user: str, message: Message, action_id: str, value: str | None = None) -> HttpResult:
        return self.driver.click_message(user, message, action_id, value)

    def wait_for_edit(self, message: Message, edits: int) -> Message:
        return self.driver.wait_for_edit(message, edits)

    def wait_for_dm(self, user: str, containing: str) -> Message:
        return self.driver.wait_for_dm(user, containing)

    def wait_for_ephemeral(self, user: str, containing: str) -> str:
        return self.driver.wait_for_ephemeral(user, containing)

    # -- the scheduler's side, run by the real lifecycle ------------------------------------

    def expire(self, after: timedelta = timedelta(days=1)) -> list[str]:
        """The scheduler's expiry sweep, run as if `after` had passed."""
        return self.flows.sweep(after)

    def remind(self, before_expiry: timedelta = timedelta(seconds=30)) -> list[str]:
        """The scheduler's before-expiry reminder, run `before_expiry` ahead of the expiry of
        a one-hour grant (the harness's default request)."""
        now = datetime.now(UTC) + timedelta(hours=1) - before_expiry
        return self.flows.web.runtime.service.expiring_soon(now)


SlackEnvFactory = Callable[[dict[str, Any]], AbstractContextManager[SlackEnv]]


@pytest.fixture
def make_slack_env(tmp_path: Path, _sqlite_template: Path, aws_env: str) -> SlackEnvFactory:
    """Start the app on a given operator config (for tests that need other routing)."""
    iam = boto3.client("iam", region_name=REGION, endpoint_url=aws_env)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        "Action": "sts:AssumeRole"}]})
    for role in EXTRA_ROLES.values():
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)
    counter = iter(range(1_000))

    @contextmanager
    def start(config: dict[str, Any]) -> Iterator[SlackEnv]:
        n = next(counter)
        database = tmp_path / f"slack-{n}.db"
        shutil.copyfile(_sqlite_template, database)
        config_path = tmp_path / f"connect-access-{n}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        with running_flows(f"sqlite:///{database}", aws_env, config_path) as flows:
            yield SlackEnv(flows)

    return start


@pytest.fixture()
def slack_env(make_slack_env: SlackEnvFactory) -> Iterator[SlackEnv]:
    with make_slack_env(slack_config()) as env:
        yield env
