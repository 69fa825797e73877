"""The one Settings object: everything the bot reads from its environment.

Construct it explicitly (`load_settings()` in the CLI); nothing reads os.environ at import.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.catalog import DEFAULT_CATALOG_FILE

_SUPPORTED_SCHEMES = ("sqlite", "postgresql")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and says what to do."""

    def __init__(self, setting: str, fault: str) -> None:
        super().__init__(f"{setting}: {fault}")
        self.setting = setting
        self.fault = fault


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str = "sqlite:///./connect-access.db"
    connect_access_config: Path | None = None
    connect_access_catalog: Path = DEFAULT_CATALOG_FILE
    slack_bot_token: str | None = None
    slack_signing_secret: str | None = None
    slack_app_token: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    # Every process: LOG_LEVEL (DEBUG, INFO, WARNING, ERROR; unset: INFO for web and
    # scheduler, WARNING for one-off commands) and LOG_FORMAT (text or json lines).
    log_level: str | None = None
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if value.upper() not in levels or value.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"must be one of {', '.join(levels)}, got {value!r}")
        return value.upper()

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, value: object) -> object:
        if value == "":
            return "text"
        if isinstance(value, str) and value.lower() in ("text", "json"):
            return value.lower()
        if isinstance(value, str):
            raise ValueError(f"must be text or json, got {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_scheme(cls, value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if "://" not in value or scheme not in _SUPPORTED_SCHEMES:
            raise ValueError(
                "must be a SQLAlchemy URL starting with sqlite:// or postgresql://, "
                f"got {value!r}"
            )
        return value

    @field_validator("slack_api_url", "aws_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("xoxb-"):
            raise ValueError("must be a bot token starting with 'xoxb-'")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("xapp-"):
            raise ValueError("must be an app-level token starting with 'xapp-'")
        return value

    @field_validator("connect_access_config", "connect_access_catalog")
    @classmethod
    def _existing_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


def load_settings(**overrides: object) -> Settings:
    """Read the environment into Settings; a bad value raises SettingsError naming the
    environment variable, never a pydantic trace."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(name, message) from None
