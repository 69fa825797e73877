"""A gunicorn entry for test_slack_gunicorn.py: the web process's own composition
(bot.slack.wsgi.build_slack_web, DbSlackServices on the database the test migrated),
pointed at the fake Slack and moto whose URLs the test passes in the environment."""

from __future__ import annotations

import os
from pathlib import Path

from bot.settings import load_settings
from bot.slack.wsgi import build_slack_web


def create() -> object:
    settings = load_settings(
        database_url=os.environ["TEST_DATABASE_URL"],
        connect_access_config=Path(os.environ["TEST_CONNECT_ACCESS_CONFIG"]),
        slack_bot_token=os.environ["TEST_SLACK_BOT_TOKEN"],
        slack_signing_secret=os.environ["TEST_SLACK_SIGNING_SECRET"],
        slack_api_url=os.environ["TEST_SLACK_API_URL"],
        aws_region="us-east-1",
        aws_endpoint_url=os.environ["TEST_AWS_ENDPOINT_URL"],
    )
    return build_slack_web(settings).wsgi()
