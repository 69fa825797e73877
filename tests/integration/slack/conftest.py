"""Fixtures for the Slack tests; the harness itself lives in slack_harness.py."""

from slack_harness import catalog, slack_env

__all__ = ["catalog", "slack_env"]
