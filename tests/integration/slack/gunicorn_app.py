"""A gunicorn entry for test_slack_gunicorn.py: the real app factory with in-memory services,
pointed at the fake Slack whose URL the test passes in the environment."""

from __future__ import annotations

import os
from datetime import timedelta

from bot.catalog import load_catalog
from bot.slack.app import build_wsgi_app
from bot.slack.approvers import SlackApproverDirectory
from bot.slack.memory_services import MemoryServices
from bot.slack.notifier import SlackNotifier
from bot.slack.services import ApprovalRoute, InstanceChoice
from bot.slack.webapi import build_web_client


def create() -> object:
    api_url = os.environ["TEST_SLACK_API_URL"]
    token = os.environ["TEST_SLACK_BOT_TOKEN"]
    web = build_web_client(token, api_url)
    directory = SlackApproverDirectory(web)
    route = ApprovalRoute("C0APPROVALS", ("S0LEADS",), 1, timedelta(hours=4))
    services = MemoryServices(
        catalog=load_catalog(),
        tiers={"read": route, "write": route, "critical": route},
        instances=(InstanceChoice("prod", "arn:aws:connect:us-east-1:111122223333:instance/p"),),
        approver_directory=directory,
    )
    services.notifier = SlackNotifier(web, services, services)
    return build_wsgi_app(
        signing_secret=os.environ["TEST_SLACK_SIGNING_SECRET"],
        bot_token=token,
        api_url=api_url,
        services=services,
        approvers=directory,
    )
