"""Logging for every process, set by LOG_LEVEL and LOG_FORMAT (text or json) in Settings.

One handler on the root logger, writing to stderr: text lines for people, or one JSON
object per line for a log pipeline. Libraries that are chatty at INFO (botocore logs
where it found credentials, gunicorn every worker boot) are held at WARNING unless
LOG_LEVEL is DEBUG, so a process starts with one line of its own. Bolt's notice that
SLACK_BOT_TOKEN "will be unused" (the bot hands Bolt its own Web API client, on purpose)
is dropped.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy.engine import make_url

from bot import __version__
from bot.settings import Settings, SettingsError, load_settings

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process_label)s pid %(process)d] %(name)s: %(message)s"
LIBRARY_LOGGERS = ("gunicorn.error", "sqlalchemy", "alembic", "botocore",
                   "urllib3", "slack_sdk", "slack_bolt")
# slack_bolt.logger.messages.warning_client_prioritized_and_token_skipped()
BOLT_TOKEN_NOTICE = "As you gave `client` as well, `token` will be unused."


class _ProcessLabel(logging.Filter):
    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_label = self.label
        return True


class _DropBoltTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != BOLT_TOKEN_NOTICE


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the record (as logging's own
    last-resort handler does), so a caller that swaps stderr, such as a test runner, gets
    the lines, and a stream it closed is never written to."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, process, pid,
    message, and the traceback as `exception` when there is one."""

    def __init__(self, process_label: str) -> None:
        super().__init__()
        self.process_label = process_label

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": self.process_label,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def level_for(settings: Settings | None, default: str) -> int:
    name = (settings.log_level if settings is not None else None) or default
    return logging.getLevelNamesMapping()[name.upper()]


def configure_logging(settings: Settings | None, process: str, *, default_level: str = "INFO",
                      stream: TextIO | None = None) -> int:
    """Send every log record of this process to stderr in LOG_FORMAT at LOG_LEVEL (or
    `default_level` when LOG_LEVEL is unset). Safe to call again: it replaces what it set
    before. Returns the level."""
    level = level_for(settings, default_level)
    fmt = settings.log_format if settings is not None else "text"
    handler: logging.Handler = (logging.StreamHandler(stream) if stream is not None
                                else _StderrHandler())
    handler.set_name("connect-access")
    # Also on the handler: a library that sets its own logger lower (moto's werkzeug in the
    # demo) does not get below LOG_LEVEL.
    handler.setLevel(level)
    handler.addFilter(_ProcessLabel(process))
    handler.setFormatter(JsonFormatter(process) if fmt == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "connect-access"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    library_level = level if level <= logging.DEBUG else max(level, logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    bolt = logging.getLogger("slack_bolt.App")
    if not any(isinstance(f, _DropBoltTokenNotice) for f in bolt.filters):
        bolt.addFilter(_DropBoltTokenNotice())
    return level


def configure_logging_from_environment(process: str, *, default_level: str = "INFO") -> int:
    """configure_logging with Settings read from the environment. A bad setting falls back
    to text at `default_level` here: the process's own load_settings() reports it."""
    try:
        settings: Settings | None = load_settings()
    except SettingsError:
        settings = None
    return configure_logging(settings, process, default_level=default_level)


def describe_database(settings: Settings) -> str:
    """The database a process uses, password hidden, and whether it is only the default."""
    url = make_url(settings.database_url).render_as_string(hide_password=True)
    if "database_url" in settings.model_fields_set:
        return url
    return f"{url} (the default: DATABASE_URL is not set)"


def startup_line(process: str, settings: Settings, detail: str = "") -> str:
    return (f"connect-access {__version__} {process}" + (f": {detail}" if detail else "")
            + f"; database {describe_database(settings)}")
