"""gunicorn settings for the web process. The Procfile's `web:` loads this module with
`--config python:bot.gunicorn_conf`; `connect-access serve` applies the same two settings.

- `logger_class`: gunicorn's own messages go through the process's logging (LOG_LEVEL,
  LOG_FORMAT), its start-up chatter ("Starting gunicorn", "Booting worker ...") held back
  unless LOG_LEVEL is DEBUG, and a worker that cannot start because of a fault the bot
  already named in one line logs no traceback on top.
- `when_ready`: the one start-up line, once the sockets listen.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger

from bot.logs import configure_logging_from_environment
from bot.settings import SettingsError, load_settings

_log = logging.getLogger("bot.web")


class WebLogger(Logger):  # type: ignore[misc]  # gunicorn is untyped
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        level = configure_logging_from_environment("web")
        for gunicorn_log in (self.error_log, self.access_log):
            for handler in list(gunicorn_log.handlers):
                gunicorn_log.removeHandler(handler)
            gunicorn_log.propagate = True
        self.error_log.setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        import sys

        from bot.slack.wsgi import StartupError

        if isinstance(sys.exc_info()[1], StartupError):
            return  # create_app() logged the fault, naming the setting; no traceback
        super().exception(msg, *args, **kwargs)


def when_ready(server: Any) -> None:
    from bot.logs import startup_line

    try:
        settings = load_settings()
    except SettingsError:
        return  # the workers report it
    addresses = ", ".join(str(listener) for listener in server.LISTENERS)
    _log.info(startup_line(
        "web", settings,
        f"serving Slack on {addresses}/slack/events "
        f"({server.num_workers} worker(s) x {server.cfg.threads} thread(s))"))


logger_class = "bot.gunicorn_conf.WebLogger"
