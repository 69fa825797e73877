"""Harness for the Slack tests: the Slack app served over real HTTP on 127.0.0.1, driven by
signed requests, talking to the fake Slack Web API, with the in-memory services (same
guards as the lifecycle). A module of its own (not conftest) so its name never clashes
with another test directory's conftest."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from bot.catalog import Catalog, load_catalog
from bot.sandbox.fake_slack import FakeSlack, Message, ResponsePost
from bot.sandbox.slack_client import AppServer, HttpResult, SlackClient, SlackDriver
from bot.slack.app import build_wsgi_app
from bot.slack.approvers import SlackApproverDirectory
from bot.slack.memory_services import MemoryServices
from bot.slack.notifier import SlackNotifier
from bot.slack.services import ApprovalRoute, InstanceChoice
from bot.slack.webapi import build_web_client

SIGNING_SECRET = "test-signing-secret"
ALICE, BOB, CAROL, DAVE, ERIN, CISO = "U0ALICE", "U0BOB", "U0CAROL", "U0DAVE", "U0ERIN", "U0CISO"
APPROVALS, SECURITY = "C0APPROVALS", "C0SECURITY"
WRITE_ENTRY = "Update Amazon Polly option"  # write tier: 1 approval from S0LEADS
CRITICAL_ENTRY = "Edit chat transcripts"  # critical tier: 2 of S0SECURITY + U0CISO

TIERS = {
    "read": ApprovalRoute(APPROVALS, ("S0LEADS",), 1, timedelta(hours=8)),
    "write": ApprovalRoute(APPROVALS, ("S0LEADS",), 1, timedelta(hours=4)),
    "critical": ApprovalRoute(SECURITY, ("S0SECURITY", CISO), 2, timedelta(hours=1)),
}
INSTANCES = (
    InstanceChoice("prod", "arn:aws:connect:us-east-1:111122223333:instance/prod"),
    InstanceChoice("staging", "arn:aws:connect:us-east-1:111122223333:instance/staging"),
)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@dataclass
class SlackEnv:
    fake: FakeSlack
    client: SlackClient
    services: MemoryServices
    driver: SlackDriver

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


@pytest.fixture()
def slack_env(catalog: Catalog) -> Iterator[SlackEnv]:
    groups = {"S0LEADS": [BOB, CAROL], "S0SECURITY": [CAROL, ERIN]}
    with FakeSlack(usergroups=groups) as fake:
        web = build_web_client(fake.bot_token, fake.api_url)
        directory = SlackApproverDirectory(web, ttl_seconds=30)
        services = MemoryServices(
            catalog=catalog, tiers=TIERS, instances=INSTANCES, approver_directory=directory
        )
        services.notifier = SlackNotifier(web, services, services)
        wsgi = build_wsgi_app(
            signing_secret=SIGNING_SECRET,
            bot_token=fake.bot_token,
            api_url=fake.api_url,
            services=services,
            approvers=directory,
        )
        with AppServer(wsgi) as server:
            client = SlackClient(server.url, SIGNING_SECRET, response_url_factory=fake.response_url)
            yield SlackEnv(fake, client, services, SlackDriver(fake, client))
