"""`connect-access check` against a fake Slack over HTTP and moto's server: every item
passes on a good deployment, and each kind of fault fails its item with the fix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from slack_flows_harness import ACCOUNT, SIGNING_SECRET, operator_config
from typer.testing import CliRunner

from bot.cli import build_cli
from bot.db import make_engine
from bot.sandbox.fake_slack import FakeSlack


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as slack:
        yield slack


@pytest.fixture
def deployment(fake: FakeSlack, aws_env: str, database_url: str, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "connect-access.yaml"
    path.write_text(yaml.safe_dump(operator_config()))
    for name, value in {
        "SLACK_BOT_TOKEN": fake.bot_token, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": fake.api_url, "DATABASE_URL": database_url,
        "CONNECT_ACCESS_CONFIG": str(path), "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": aws_env,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("SLACK_APP_TOKEN", "CONNECT_ACCESS_CATALOG"):
        monkeypatch.delenv(name, raising=False)
    return path


def run_check() -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(build_cli(), ["check", "--json"])
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.output)


def items(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in report["checks"]}


def test_a_good_deployment_passes_every_item(deployment: Path, fake: FakeSlack) -> None:
    code, report = run_check()
    assert code == 0, report
    assert report["ok"] is True
    by_name = items(report)
    assert list(by_name) == ["settings", "catalog", "config", "database", "slack",
                             f"aws {ACCOUNT} (prod)"]
    assert "scopes commands, chat:write, im:write, usergroups:read, files:write, channels:history, groups:history granted" in \
        by_name["slack"]["detail"]
    assert fake.calls("auth.test")
    assert f"arn:aws:sts::{ACCOUNT}:" in by_name[f"aws {ACCOUNT} (prod)"]["detail"]


def test_text_output_names_each_item_and_the_fix(deployment: Path, fake: FakeSlack) -> None:
    fake.bot_scopes = ("commands", "chat:write")
    result = CliRunner().invoke(build_cli(), ["check"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "PASS  database: " in "\n".join(lines)
    slack = next(i for i, line in enumerate(lines) if line.startswith("FAIL  slack:"))
    assert "lacks the scope(s) im:write, usergroups:read, files:write" in lines[slack]
    assert lines[slack + 1].startswith("      fix: add them under OAuth & Permissions")
    assert lines[-1] == "1 check(s) failed"


def test_a_refused_slack_token_fails_the_slack_item(deployment: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-revoked")
    code, report = run_check()
    assert code == 1
    slack = items(report)["slack"]
    assert slack["ok"] is False and "refused SLACK_BOT_TOKEN (invalid_auth)" in slack["detail"]


def test_an_unmigrated_database_fails_the_database_item(deployment: Path,
                                                        database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        version = connection.execute(sa.text("SELECT version_num FROM alembic_version")
                                     ).scalar_one()
        connection.execute(sa.text("DELETE FROM alembic_version"))
    try:
        code, report = run_check()
        assert code == 1
        database = items(report)["database"]
        assert database["ok"] is False and "has no schema yet" in database["detail"]
        assert database["fix"] == "run `connect-access db upgrade` (the Procfile's release)"
        assert all(item["ok"] for name, item in items(report).items() if name != "database")
    finally:
        # On PostgreSQL the schema is shared by this worker's later tests: put it back.
        with engine.begin() as connection:
            connection.execute(sa.text("INSERT INTO alembic_version (version_num) "
                                       "VALUES (:v)"), {"v": version})
        engine.dispose()


def test_credentials_of_another_account_fail_that_accounts_item(
        deployment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = operator_config()
    config["instances"].append({
        "alias": "other", "arn": "arn:aws:connect:us-east-1:111122223333:instance/"
                                 "22222222-3333-4444-5555-666666666666"})
    deployment.write_text(yaml.safe_dump(config))
    code, report = run_check()
    assert code == 1
    other = items(report)["aws 111122223333 (other)"]
    assert other["ok"] is False
    assert f"are for account {ACCOUNT}, not 111122223333" in other["detail"]
    assert other["fix"] == "set assume_role_arn on other to a role in 111122223333"
    assert items(report)[f"aws {ACCOUNT} (prod)"]["ok"] is True


def test_a_missing_config_and_a_bad_setting_are_items_not_tracebacks(
        deployment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONNECT_ACCESS_CONFIG")
    code, report = run_check()
    assert code == 1
    config = items(report)["config"]
    assert config["detail"] == "CONNECT_ACCESS_CONFIG is not set"
    assert items(report)["aws"]["detail"] == "not checked: no usable operator config"

    monkeypatch.setenv("DATABASE_URL", "mysql://nope")
    code, report = run_check()
    assert code == 1
    assert items(report)["settings"]["ok"] is False
    assert "DATABASE_URL" in items(report)["settings"]["detail"]


def test_the_required_scopes_are_the_manifests() -> None:
    from bot.db import PROJECT_ROOT
    from bot.slack.scopes import REQUIRED_BOT_SCOPES

    manifest = yaml.safe_load((PROJECT_ROOT / "slack-manifest.yaml").read_text())
    assert tuple(manifest["oauth_config"]["scopes"]["bot"]) == REQUIRED_BOT_SCOPES


def test_configured_audit_anchors_are_checked(deployment: Path, aws_env: str,
                                              tmp_path: Path) -> None:
    import boto3

    from bot.signing import write_new_key

    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=aws_env)
    s3.create_bucket(Bucket="check-anchors", ObjectLockEnabledForBucket=True)
    s3.create_bucket(Bucket="check-no-lock")
    signer = write_new_key(tmp_path / "audit.pem")
    config = operator_config()
    config["audit"] = {"signing_key_file": str(tmp_path / "audit.pem"),
                       "anchor_bucket": "check-anchors"}
    deployment.write_text(yaml.safe_dump(config))
    code, report = run_check()
    assert code == 0, report
    anchors = items(report)["audit anchors"]
    assert anchors["ok"] and signer.key_id in anchors["detail"]
    assert "no checkpoint yet" in anchors["detail"]
    config["audit"]["anchor_bucket"] = "check-no-lock"
    deployment.write_text(yaml.safe_dump(config))
    code, report = run_check()
    assert code == 1
    anchors = items(report)["audit anchors"]
    assert not anchors["ok"] and "Object Lock is not enabled" in anchors["detail"]
    assert "Object Lock" in anchors["fix"]
