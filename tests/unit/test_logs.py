"""LOG_LEVEL and LOG_FORMAT: parsed by Settings with a clear error, applied by
bot.logs.configure_logging to every record of the process."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bot.logs import BOLT_TOKEN_NOTICE, configure_logging, describe_database
from bot.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_settings_are_validated_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    settings = load_settings()
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(SettingsError, match=r"^LOG_FORMAT: must be text or json, got 'xml'$"):
        load_settings()
    monkeypatch.setenv("LOG_FORMAT", "text")
    monkeypatch.setenv("LOG_LEVEL", "loud")
    with pytest.raises(SettingsError, match=r"^LOG_LEVEL: must be one of DEBUG, INFO"):
        load_settings()


def test_json_lines_carry_level_logger_process_and_the_traceback() -> None:
    stream = io.StringIO()
    configure_logging(load_settings(log_format="json"), "scheduler", stream=stream)
    logging.getLogger("bot.test").info("revoked %d grant(s)", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("bot.test").exception("sweep step failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "revoked 3 grant(s)"
    assert (first["level"], first["logger"], first["process"]) == ("INFO", "bot.test", "scheduler")
    assert first["time"].endswith("Z") and isinstance(first["pid"], int)
    assert second["level"] == "ERROR"
    assert second["exception"].startswith("Traceback") and "ValueError: boom" in second["exception"]


def test_level_applies_to_libraries_and_bolts_token_notice_is_dropped() -> None:
    stream = io.StringIO()
    configure_logging(load_settings(log_level="INFO"), "web", stream=stream)
    logging.getLogger("botocore.credentials").info("Found credentials")  # chatty: held back
    noisy = logging.getLogger("werkzeug")
    noisy.setLevel(logging.DEBUG)  # a library lowering its own logger is still bounded
    noisy.debug("GET / 200")
    logging.getLogger("slack_bolt.App").warning(BOLT_TOKEN_NOTICE)
    logging.getLogger("bot.web").info("started")
    assert stream.getvalue().count("\n") == 1 and "started" in stream.getvalue()


def test_configuring_again_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(None, "cli", stream=first)
    configure_logging(None, "cli", stream=second)
    logging.getLogger("bot.test").warning("once")
    assert first.getvalue() == "" and second.getvalue().count("once") == 1


def test_describe_database_hides_the_password_and_says_when_it_is_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert describe_database(load_settings(
        database_url="postgresql+psycopg://bot:s3cret@db/bot")) == \
        "postgresql+psycopg://bot:***@db/bot"
    assert describe_database(load_settings()) == \
        "sqlite:///./connect-access.db (the default: DATABASE_URL is not set)"
