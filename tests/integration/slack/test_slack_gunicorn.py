"""The app under gunicorn (the production server): lazy listeners run after the ack."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from server_process import free_port, serving
from slack_harness import ALICE, SIGNING_SECRET, slack_config

from bot.sandbox.fake_slack import FakeSlack
from bot.sandbox.slack_client import SlackClient

HERE = Path(__file__).resolve().parent


@pytest.fixture()
def gunicorn_app(tmp_path: Path, _sqlite_template: Path, aws_env: str
                 ) -> Iterator[tuple[FakeSlack, str]]:
    database = tmp_path / "gunicorn.db"
    shutil.copyfile(_sqlite_template, database)
    config = tmp_path / "connect-access.yaml"
    config.write_text(yaml.safe_dump(slack_config()))
    with FakeSlack() as fake:
        port = free_port()
        env = {
            **os.environ,
            "TEST_SLACK_API_URL": fake.api_url,
            "TEST_SLACK_BOT_TOKEN": fake.bot_token,
            "TEST_SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "TEST_DATABASE_URL": f"sqlite:///{database}",
            "TEST_CONNECT_ACCESS_CONFIG": str(config),
            "TEST_AWS_ENDPOINT_URL": aws_env,
        }
        command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                   "--workers", "1", "--threads", "4", "--chdir", str(HERE),
                   "gunicorn_app:create()"]
        with serving(command, port=port, env=env, log_path=tmp_path / "gunicorn.log"):
            yield fake, f"http://127.0.0.1:{port}/slack/events"


@pytest.mark.slow
def test_lazy_listeners_run_under_gunicorn(gunicorn_app: tuple[FakeSlack, str]) -> None:
    fake, url = gunicorn_app
    client = SlackClient(url, SIGNING_SECRET, response_url_factory=fake.response_url)
    lookup = client.command(ALICE, "Edit chat transcripts")
    assert lookup.status == 200
    assert "Edit chat transcripts" in json.dumps(lookup.json()["blocks"])  # answered in the ack
    result = client.command(ALICE, "status")
    assert result.status == 200 and result.body == ""
    post = fake.wait_for_responses(1, timeout=10)[0]  # posted by a lazy listener
    assert "Your requests" in json.dumps(post.body)
    assert client.command(ALICE, "help", signature="v0=bad").status == 401
