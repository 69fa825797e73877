"""Settings come from the environment when asked for, and bad values name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.catalog import DEFAULT_CATALOG_FILE
from bot.settings import Settings, SettingsError, load_settings

ENV_NAMES = ("DATABASE_URL", "CONNECT_ACCESS_CONFIG", "CONNECT_ACCESS_CATALOG", "SLACK_BOT_TOKEN",
             "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "SLACK_API_URL", "AWS_REGION",
             "AWS_ENDPOINT_URL")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///./connect-access.db"
    assert settings.connect_access_catalog == DEFAULT_CATALOG_FILE
    assert settings.connect_access_config is None and settings.slack_bot_token is None
    assert settings.slack_api_url == "https://slack.com/api/"


def test_reads_environment_only_when_constructed(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text("{}\n")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://bot@db/bot")
    monkeypatch.setenv("CONNECT_ACCESS_CONFIG", str(config))
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1-2")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://bot@db/bot"
    assert settings.connect_access_config == config
    assert (settings.slack_bot_token, settings.slack_app_token) == ("xoxb-1-2", "xapp-1")
    assert (settings.aws_endpoint_url, settings.aws_region) == ("http://127.0.0.1:5000",
                                                               "eu-west-2")
    assert isinstance(settings, Settings)


@pytest.mark.parametrize(("name", "value", "fault"), [
    ("DATABASE_URL", "mysql://x/y", "sqlite:// or postgresql://"),
    ("DATABASE_URL", "connect-access.db", "SQLAlchemy URL"),
    ("CONNECT_ACCESS_CONFIG", "/no/such/operator.yaml", "no such file"),
    ("CONNECT_ACCESS_CATALOG", "/no/such/catalog.yaml", "no such file"),
    ("SLACK_BOT_TOKEN", "xoxp-user-token", "xoxb-"),
    ("SLACK_APP_TOKEN", "xoxb-1", "xapp-"),
    ("SLACK_API_URL", "slack.example", "http(s) URL"),
    ("AWS_ENDPOINT_URL", "localhost:5000", "http(s) URL"),
])
def test_invalid_setting_is_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                  fault: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.setting == name
    assert str(caught.value).startswith(f"{name}: ") and fault in str(caught.value)
