"""Probes for load balancers and orchestrators on the web process, beside the Slack app:

- `GET /healthz`: the process lives and answers HTTP (liveness). Touches nothing else, so a
  database outage does not get every web process restarted.
- `GET /readyz`: this process can serve Slack (readiness): the database answers and is at
  the migration head (or at a newer one: during a rolling upgrade the old processes keep
  serving), and the operator config and the catalog are loaded. 200 or 503, with a JSON
  body naming each check and, when one fails, why.

Every other path and method goes to the Slack app unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from bot import __version__
from bot.catalog import Catalog
from bot.config import OperatorConfig
from bot.dbcheck import DatabaseNotReady, require_current_schema

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def readiness_checks(engine: Engine, config: OperatorConfig | None, catalog: Catalog | None,
                     database: str) -> list[Check]:
    checks: list[Check] = []
    try:
        state = require_current_schema(engine, database)
        checks.append(Check("database", True, f"at migration {state.current}"))
    except DatabaseNotReady as exc:
        # A newer version migrated the database (a rolling upgrade: release ran, this
        # process is next). Migrations only add, so this process still serves; it says so.
        checks.append(Check("database", exc.reason == "unknown_revision", str(exc)))
    if config is None:
        checks.append(Check("config", False, "the operator config is not loaded"))
    else:
        checks.append(Check("config", bool(config.instances),
                            f"{len(config.instances)} instance(s)" if config.instances
                            else "no Amazon Connect instance is configured"))
    if catalog is None:
        checks.append(Check("catalog", False, "the catalog is not loaded"))
    else:
        checks.append(Check("catalog", len(catalog) > 0, f"{len(catalog)} entries"))
    return checks


class HealthRoutes:
    """WSGI middleware: the two probes, then the wrapped app."""

    def __init__(self, app: WSGIApplication, ready: Callable[[], list[Check]]) -> None:
        self.app = app
        self.ready = ready

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in (HEALTH_PATH, READY_PATH):
            answer = self.app(environ, start_response)
            if environ.get("REQUEST_METHOD") == "HEAD":
                # Bolt answers HEAD like GET (a 404 page); a HEAD response has no body, and
                # gunicorn logs a warning for every one that brings one.
                _close(answer)
                return []
            return answer
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _respond(start_response, "405 Method Not Allowed",
                            {"error": "use GET"}, environ, [("Allow", "GET, HEAD")])
        if path == HEALTH_PATH:
            return _respond(start_response, "200 OK",
                            {"status": "ok", "version": __version__}, environ)
        try:
            checks = self.ready()
        except Exception as exc:  # a probe answers; it never turns into a 500 page
            checks = [Check("readiness", False, f"{type(exc).__name__}: {exc}")]
        ready = all(c.ok for c in checks)
        body = {"status": "ready" if ready else "not ready", "version": __version__,
                "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}}
        return _respond(start_response, "200 OK" if ready else "503 Service Unavailable",
                        body, environ)


def _respond(start_response: StartResponse, status: str, body: dict[str, Any],
             environ: WSGIEnvironment,
             extra_headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(payload))),
                            ("Cache-Control", "no-store"), *(extra_headers or [])])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [payload]


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if callable(close):
        close()
