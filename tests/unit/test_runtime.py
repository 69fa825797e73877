"""The composition root: which notifier, approver directory and alerter each process kind
gets. Nothing here opens a database connection or calls AWS or Slack (the engine, the
boto3 clients and the Slack Web API client are all lazy)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from doubles import RecordingNotifier

from bot.alerts import LoggingAlerter
from bot.evidence import NotificationRecorder
from bot.runtime import (
    DirectApproverDirectory,
    LoggingNotifier,
    build_runtime,
    cli_runtime,
    scheduler_runtime,
    web_runtime,
)
from bot.settings import Settings
from bot.slack.alerter import SlackAlerter
from bot.slack.approvers import SlackApproverDirectory
from bot.slack.notifier import SlackNotifier


def settings_for(tmp_path: Path, *, token: str | None, alerts: str | None = None) -> Settings:
    config = tmp_path / "operator.yaml"
    data: dict[str, object] = {"routing": {"tiers": {"critical": {"channel": "C0SECURITY"}}}}
    if alerts:
        data["alerts"] = {"channel": alerts}
    config.write_text(yaml.safe_dump(data))
    return Settings(database_url=f"sqlite:///{tmp_path / 'unused.db'}", aws_region="us-east-1",
                    connect_access_config=config, slack_bot_token=token,
                    slack_api_url="http://127.0.0.1:9/api/")


@pytest.mark.parametrize("compose", [web_runtime, scheduler_runtime, cli_runtime])
def test_every_process_kind_talks_to_slack_when_it_has_a_token(
        tmp_path: Path, compose: object) -> None:
    runtime = compose(settings_for(tmp_path, token="xoxb-1", alerts="C0ALERTS"))  # type: ignore[operator]
    try:
        # Wrapped so that each notification sent is recorded for `audit show`.
        assert isinstance(runtime.notifier, NotificationRecorder)
        assert isinstance(runtime.notifier.inner, SlackNotifier)
        assert runtime.service.notifier is runtime.notifier
        assert isinstance(runtime.approvers, SlackApproverDirectory)
        assert isinstance(runtime.alerter, SlackAlerter)
        assert runtime.alerter.channel == "C0ALERTS"
        assert runtime.service.alerter is runtime.alerter
    finally:
        runtime.close()


@pytest.mark.parametrize("compose", [web_runtime, scheduler_runtime, cli_runtime])
def test_without_a_token_notifications_and_alerts_are_logged(
        tmp_path: Path, compose: object) -> None:
    runtime = compose(settings_for(tmp_path, token=None))  # type: ignore[operator]
    try:
        assert isinstance(runtime.notifier, LoggingNotifier)
        assert isinstance(runtime.approvers, DirectApproverDirectory)
        assert isinstance(runtime.alerter, LoggingAlerter)
        assert "log" in runtime.alert_destination.explanation
    finally:
        runtime.close()


def test_without_an_alerts_channel_alerts_go_to_the_critical_channel_and_it_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="bot.runtime"):
        runtime = scheduler_runtime(settings_for(tmp_path, token="xoxb-1"))
    try:
        assert isinstance(runtime.alerter, SlackAlerter)
        assert runtime.alerter.channel == "C0SECURITY"
        said = [r.getMessage() for r in caplog.records if r.name == "bot.runtime"]
        assert said == ["scheduler: alerts.channel is not set in the operator config; alerts "
                        "go to the critical tier's approval channel C0SECURITY instead"]
    finally:
        runtime.close()


def test_a_ready_notifier_is_used_as_it_is(tmp_path: Path) -> None:
    notifier = RecordingNotifier()
    runtime = build_runtime(settings_for(tmp_path, token=None), notifier=notifier,
                            min_duration=timedelta(seconds=1))
    try:
        assert isinstance(runtime.service.notifier, NotificationRecorder)
        assert runtime.service.notifier.inner is notifier
        assert runtime.notifier is runtime.service.notifier
        assert runtime.service.min_duration == timedelta(seconds=1)
    finally:
        runtime.close()
