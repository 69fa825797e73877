"""Fixtures for the Slack tests; the harness itself lives in slack_harness.py (over
tests/integration/slack_flows_harness.py)."""

from slack_flows_harness import aws_env, moto_url
from slack_harness import make_slack_env, slack_env

__all__ = ["aws_env", "make_slack_env", "moto_url", "slack_env"]
