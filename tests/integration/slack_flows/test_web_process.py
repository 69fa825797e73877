"""The web process as a load balancer and an operator see it: GET /healthz and /readyz
beside /slack/events, over real HTTP; and the Procfile's own `web:` command under gunicorn,
with its logs in LOG_FORMAT (one start-up line, no Bolt token notice, no traceback for a
fault it names)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from server_process import free_port, serving
from slack_flows_harness import ALICE, SIGNING_SECRET, operator_config

from bot.db import PROJECT_ROOT, downgrade, make_engine, upgrade
from bot.sandbox.fake_slack import FakeSlack
from bot.sandbox.slack_client import AppServer, SlackClient
from bot.slack.wsgi import load_slack_web, with_health_routes

PROCFILE = PROJECT_ROOT / "Procfile"


def procfile_web() -> str:
    for line in PROCFILE.read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no web: line in the Procfile")


@contextmanager
def web_app() -> Iterator[AppServer]:
    """create_app()'s app (the probes in front of the guarded Slack handler) on a real
    HTTP server, its database pool released afterwards."""
    web = load_slack_web()
    try:
        with AppServer(with_health_routes(web, web.wsgi())) as server:
            yield server
    finally:
        web.close()


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as slack:
        yield slack


def _settings(fake: FakeSlack, database_url: str, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "connect-access.yaml"
    # With an alerts channel, so the web process has no config warning to log at start.
    path.write_text(yaml.safe_dump({**operator_config(), "alerts": {"channel": "C0ALERTS"}}))
    return {
        "SLACK_BOT_TOKEN": fake.bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": fake.api_url,
        "DATABASE_URL": database_url,
        "CONNECT_ACCESS_CONFIG": str(path),
        "AWS_REGION": "us-east-1",
    }


@pytest.fixture
def web_settings(fake: FakeSlack, database_url: str, tmp_path: Path) -> dict[str, str]:
    """A web process's environment on each backend."""
    return _settings(fake, database_url, tmp_path)


@pytest.fixture
def sqlite_web_settings(fake: FakeSlack, _sqlite_template: Path, tmp_path: Path
                        ) -> dict[str, str]:
    """The same on a SQLite file, for what does not depend on the backend (the process,
    its logs) or needs a file to take away."""
    path = tmp_path / "web.db"
    shutil.copyfile(_sqlite_template, path)
    return _settings(fake, f"sqlite:///{path}", tmp_path)


def _apply(settings: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    for name in ("SLACK_APP_TOKEN", "LOG_FORMAT", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    return settings


@pytest.fixture
def web_env(web_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return _apply(web_settings, monkeypatch)


def test_healthz_and_readyz_answer_beside_the_slack_endpoint(web_env: dict[str, str],
                                                             fake: FakeSlack) -> None:
    with web_app() as server:
        base = server.url.removesuffix("/slack/events")
        status, body = get(f"{base}/healthz")
        assert status == 200 and body["status"] == "ok"
        status, body = get(f"{base}/readyz")
        assert status == 200 and body["status"] == "ready"
        assert body["checks"]["database"]["ok"] is True
        assert body["checks"]["config"] == {"ok": True, "detail": "1 instance(s)"}
        assert body["checks"]["catalog"]["detail"] == "64 entries"
        # The Slack endpoint is untouched: a signed command is answered, a bad signature
        # refused.
        client = SlackClient(server.url, SIGNING_SECRET, response_url_factory=fake.response_url)
        assert client.command(ALICE, "help").status == 200
        assert client.command(ALICE, "help", signature="v0=bad").status == 401
        # Probes answer GET only.
        request = urllib.request.Request(f"{base}/healthz", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405


def test_readyz_fails_while_the_database_is_not_migrated(web_env: dict[str, str]) -> None:
    database_url = web_env["DATABASE_URL"]
    with web_app() as server:
        base = server.url.removesuffix("/slack/events")
        downgrade(database_url)
        try:
            status, body = get(f"{base}/readyz")
            assert status == 503 and body["status"] == "not ready"
            assert body["checks"]["database"]["ok"] is False
            assert "run `connect-access db upgrade` first" in body["checks"]["database"]["detail"]
            # Alive all the same: a liveness probe must not restart it for this.
            assert get(f"{base}/healthz")[0] == 200
        finally:
            upgrade(database_url)
        assert get(f"{base}/readyz")[0] == 200


def test_readyz_fails_when_the_database_goes_away(sqlite_web_settings: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    web_env = _apply(sqlite_web_settings, monkeypatch)
    path = Path(web_env["DATABASE_URL"].removeprefix("sqlite:///"))
    with web_app() as server:
        base = server.url.removesuffix("/slack/events")
        moved = path.with_name("moved.db")
        path.rename(moved)
        try:
            status, body = get(f"{base}/readyz")
            assert status == 503
            assert "there is no database at" in body["checks"]["database"]["detail"]
        finally:
            moved.rename(path)


def _gunicorn_env(web_settings: dict[str, str], port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLACK_", "LOG_", "DATABASE_URL", "CONNECT_ACCESS"))}
    env.update(web_settings, PORT=str(port), WEB_CONCURRENCY="1", **extra)
    # The Procfile's programs (gunicorn) from this virtual environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_the_procfile_web_command_serves_probes_and_logs_json(
        sqlite_web_settings: dict[str, str], tmp_path: Path) -> None:
    web_settings = sqlite_web_settings
    port = free_port()
    env = _gunicorn_env(web_settings, port, LOG_FORMAT="json")
    log_path = tmp_path / "web.log"
    # The Procfile's line as its runner would run it (it binds 0.0.0.0; the test talks to
    # 127.0.0.1 only).
    command = ["sh", "-c", f"exec {procfile_web()}"]
    with serving(command, port=port, env=env, log_path=log_path):
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        # HEAD anywhere else is Bolt's 404, without the body gunicorn would warn about
        # (a log line per request anyone could send).
        for path in ("/slack/events", "/nope", "/"):
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="HEAD")
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(request, timeout=10)
            assert missing.value.code == 404 and missing.value.read() == b""
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "process", "pid", "message"}
        assert line["process"] == "web"
    started = [line for line in lines if "serving Slack on" in line["message"]]
    assert len(started) == 1
    assert started[0]["message"].startswith("connect-access ")
    assert f"http://0.0.0.0:{port}/slack/events" in started[0]["message"]
    messages = " ".join(line["message"] for line in lines)
    assert "will be unused" not in messages and "Booting worker" not in messages
    assert "no-body response" not in messages
    assert "Traceback" not in log_path.read_text()


@pytest.mark.slow
def test_the_procfile_web_command_starts_with_one_text_line(
        sqlite_web_settings: dict[str, str], tmp_path: Path) -> None:
    web_settings = sqlite_web_settings
    port = free_port()
    log_path = tmp_path / "web.log"
    with serving(["sh", "-c", f"exec {procfile_web()}"], port=port,
                 env=_gunicorn_env(web_settings, port), log_path=log_path):
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        startup = log_path.read_text().splitlines()
    assert len(startup) == 1, startup
    assert "INFO [web pid" in startup[0] and "serving Slack on" in startup[0]


@pytest.mark.slow
def test_a_worker_that_cannot_start_says_why_without_a_traceback(
        sqlite_web_settings: dict[str, str], tmp_path: Path) -> None:
    web_settings = sqlite_web_settings
    engine = make_engine(web_settings["DATABASE_URL"])
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM alembic_version"))
    engine.dispose()
    port = free_port()
    completed = subprocess.run(["sh", "-c", f"exec {procfile_web()}"],
                               env=_gunicorn_env(web_settings, port), capture_output=True,
                               text=True, timeout=60, check=False)
    assert completed.returncode != 0
    assert "connect-access cannot start: DATABASE_URL:" in completed.stderr
    assert "run `connect-access db upgrade` first" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_readyz_stays_ready_when_a_newer_version_migrated_the_database(
        web_env: dict[str, str]) -> None:
    """A rolling upgrade: release ran with the new version; old processes keep serving."""
    database_url = web_env["DATABASE_URL"]
    with web_app() as server:
        base = server.url.removesuffix("/slack/events")
        engine = make_engine(database_url)
        with engine.begin() as connection:
            current = connection.execute(sa.text("SELECT version_num FROM alembic_version")
                                         ).scalar_one()
            connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999_next'"))
        try:
            status, body = get(f"{base}/readyz")
            assert status == 200
            assert "is at migration 9999_next, which connect-access" in \
                body["checks"]["database"]["detail"]
        finally:
            with engine.begin() as connection:
                connection.execute(sa.text("UPDATE alembic_version SET version_num = :v"),
                                   {"v": current})
            engine.dispose()
