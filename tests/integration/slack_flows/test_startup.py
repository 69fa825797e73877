"""The web process refuses to start on a bad setting or config key, naming it; the shipped
example config starts; `connect-access serve` serves the app under gunicorn."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from server_process import free_port, serving
from slack_flows_harness import ALICE, SIGNING_SECRET, WRITE_ENTRY, operator_config
from typer.testing import CliRunner

from bot.catalog import load_catalog
from bot.cli import build_cli
from bot.config import load_config
from bot.db import PROJECT_ROOT
from bot.sandbox.fake_slack import FakeSlack
from bot.sandbox.slack_client import SlackClient, SlackDriver
from bot.slack.wsgi import StartupError, check_routing, create_app

EXAMPLE_CONFIG = PROJECT_ROOT / "deploy" / "connect-access.example.yaml"


def test_the_example_config_loads_and_routes_every_entry() -> None:
    config = load_config(EXAMPLE_CONFIG)
    assert [i.alias for i in config.instances] == ["prod", "staging"]
    assert config.router.tiers["critical"].approvals == 2
    check_routing(config, load_catalog(), str(EXAMPLE_CONFIG))  # raises on a fault
    # Every override in the example matches something in the catalog.
    catalog = load_catalog()
    for override in config.router.overrides:
        assert any(override.matches(entry) for entry in catalog), override


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as slack:
        yield slack


@pytest.fixture
def migrated_sqlite(_sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "web.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def web_env(fake: FakeSlack, migrated_sqlite: str, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of a web process with a valid config; returns the config path for
    tests to break."""
    path = tmp_path / "connect-access.yaml"
    path.write_text(yaml.safe_dump(operator_config()))
    for name, value in {
        "SLACK_BOT_TOKEN": fake.bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": fake.api_url,
        "DATABASE_URL": migrated_sqlite,
        "CONNECT_ACCESS_CONFIG": str(path),
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    return path


def test_create_app_starts_with_a_good_config(web_env: Path, fake: FakeSlack) -> None:
    app = create_app()
    assert callable(app)
    assert fake.calls("auth.test"), "Bolt checked the token against the Web API"


def broken(change: Any) -> dict[str, Any]:
    config = copy.deepcopy(operator_config())
    change(config)
    return config


BROKEN_CONFIGS = {
    "routing.tiers.write.approvals: must be a whole number >= 1, got 0":
        lambda c: c["routing"]["tiers"]["write"].update(approvals=0),
    "routing.tiers.critical.approvals: needs 3 approvals but lists only 2 approver(s)":
        lambda c: c["routing"]["tiers"]["critical"].update(approvers=["U0CISO", "U0CTO"],
                                                          approvals=3),
    "routing.tiers.read.channel: no approval channel is set":
        lambda c: c["routing"]["tiers"]["read"].pop("channel"),
    "routing.overrides[0].approvers: no approvers are set":
        lambda c: c["routing"].update(overrides=[{"match": {"page": "Federations"},
                                                  "approvers": []}]),
    # An override's max_duration past its tier's max_total_duration: a first grant could
    # last longer than the tier lets a request last with all its extensions.
    "routing.overrides[0].max_duration: 3h is longer than the 2h a critical-tier request":
        lambda c: (c["routing"]["tiers"]["critical"].update(max_total_duration="2h"),
                   c["routing"].update(overrides=[{"match": {"page": "Federations"},
                                                   "max_duration": "3h"}])),
    "instances: no Amazon Connect instance is configured":
        lambda c: c.pop("instances"),
    "instances[0].arn: must be an Amazon Connect instance ARN":
        lambda c: c["instances"][0].update(arn="arn:aws:iam::123456789012:role/oops"),
    "principals.U0ALICE: 'alice' is not an IAM principal ARN":
        lambda c: c["principals"].update(U0ALICE="alice"),
    "principals.U0BOB: a shared role needs the person's session_name":
        lambda c: c["principals"].update(U0BOB={"role": "arn:aws:iam::123456789012:role/r"}),
    "timings.pending_tll: unknown key":
        lambda c: c.update(timings={"pending_tll": "1h"}),
}


@pytest.mark.parametrize("expected", list(BROKEN_CONFIGS))
def test_create_app_refuses_a_broken_config_naming_the_key(
    web_env: Path, fake: FakeSlack, expected: str
) -> None:
    web_env.write_text(yaml.safe_dump(broken(BROKEN_CONFIGS[expected])))
    with pytest.raises(StartupError) as refused:
        create_app()
    message = str(refused.value)
    assert expected in message
    assert str(web_env) in message  # which file
    assert not fake.calls("auth.test")  # refused before talking to anyone


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SLACK_SIGNING_SECRET", None, "SLACK_SIGNING_SECRET: not set"),
        ("SLACK_BOT_TOKEN", None, "SLACK_BOT_TOKEN: not set"),
        ("SLACK_BOT_TOKEN", "xoxp-user-token", "SLACK_BOT_TOKEN: must be a bot token"),
        ("SLACK_BOT_TOKEN", "xoxb-not-the-right-one", "SLACK_BOT_TOKEN: Slack at"),
        ("CONNECT_ACCESS_CONFIG", None, "CONNECT_ACCESS_CONFIG: not set"),
        ("CONNECT_ACCESS_CONFIG", "/nonexistent.yaml", "CONNECT_ACCESS_CONFIG: no such file"),
        ("DATABASE_URL", "mysql://db/x", "DATABASE_URL: must be a SQLAlchemy URL"),
    ],
)
def test_create_app_names_the_bad_setting(
    web_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str | None,
    expected: str,
) -> None:
    if value is None:
        monkeypatch.delenv(variable)
    else:
        monkeypatch.setenv(variable, value)
    with pytest.raises(StartupError, match=expected.replace("(", r"\(")):
        create_app()


def test_create_app_refuses_an_unmigrated_database(
    web_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StartupError, match=r"DATABASE_URL: .* run `connect-access db upgrade`"):
        create_app()


def test_serve_refuses_socket_mode_without_an_app_token(web_env: Path) -> None:
    result = CliRunner().invoke(build_cli(), ["serve", "--socket-mode"])
    assert result.exit_code == 2
    assert "SLACK_APP_TOKEN: not set" in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_a_broken_config_before_starting_gunicorn(web_env: Path) -> None:
    web_env.write_text(yaml.safe_dump(broken(BROKEN_CONFIGS[
        "routing.tiers.read.channel: no approval channel is set"])))
    result = CliRunner().invoke(build_cli(), ["serve", "--port", "9"])
    assert result.exit_code == 2
    assert "routing.tiers.read.channel" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_serve_runs_the_app_under_gunicorn(
    web_env: Path, fake: FakeSlack, aws_env: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": aws_env}
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-c", "from bot.cli import main; main()", "serve",
               "--port", str(port), "--workers", "1", "--threads", "4"]
    with serving(command, port=port, env=env, log_path=log_path):
        client = SlackClient(f"http://127.0.0.1:{port}/slack/events", SIGNING_SECRET,
                             response_url_factory=fake.response_url)
        driver = SlackDriver(fake, client, timeout=15)
        assert client.command(ALICE, "help", signature="v0=bad").status == 401
        # The whole path through the production server: preview, modal, the request
        # stored and its approval message posted in the tier's channel.
        _, message = driver.request(ALICE, WRITE_ENTRY, instance="prod", seconds=3600,
                                    reason="Customer escalation INC-42")
        assert message.channel == "C0APPROVALS"
        assert "Customer escalation INC-42" in json.dumps(message.blocks)
    assert "serving Slack on http://127.0.0.1:" in log_path.read_text()
