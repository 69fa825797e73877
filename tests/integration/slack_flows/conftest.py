"""Fixtures for the end-to-end Slack tests; the harness lives in slack_flows_harness.py (a
module name of its own, so it never clashes with another directory's conftest)."""

from slack_flows_harness import aws_env, config_path, flows, moto_url

__all__ = ["aws_env", "config_path", "flows", "moto_url"]
