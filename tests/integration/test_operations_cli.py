"""The operations commands on a database that is missing, unreachable or not migrated say
so in one line with what to do; which database they use when DATABASE_URL is unset; and
every reporting command speaks JSON with --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from bot import __version__
from bot.cli import build_cli
from bot.db import make_engine, upgrade
from bot.dbcheck import migration_head

DB_COMMANDS = [["grants", "list"], ["audit", "verify"], ["audit", "export", "--format", "jsonl"],
               ["stats"], ["status"]]


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_cli(), list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def invoke_json(*args: str) -> tuple[int, object]:
    """The command's stdout as JSON (warnings go to stderr)."""
    result = CliRunner().invoke(build_cli(), list(args))
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.parametrize("command", DB_COMMANDS, ids=" ".join)
def test_an_unmigrated_database_is_named_with_the_fix(
        command: list[str], empty_database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    upgrade(empty_database_url, "base")  # reachable, and nothing in it
    code, output = invoke(*command)
    assert code == 2
    assert output.startswith("error: the database ")
    assert "has no schema yet; run `connect-access db upgrade` first" in output
    assert len(output.strip().splitlines()) == 1


def test_a_database_behind_or_ahead_of_this_version(empty_database_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    upgrade(empty_database_url, "0001")
    code, output = invoke("grants", "list")
    assert code == 2
    assert f"is at migration 0001, not the latest ({migration_head()}); run " in output
    upgrade(empty_database_url)
    engine = make_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    engine.dispose()
    code, output = invoke("grants", "list")
    assert code == 2
    assert "is at migration 9999_future, which connect-access" in output
    assert "upgrade this installation" in output


def test_without_database_url_the_default_is_named_and_not_created(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code, output = invoke("grants", "list")
    assert code == 2
    assert output.strip() == (
        "error: there is no database at sqlite:///./connect-access.db (the default: "
        "DATABASE_URL is not set): set DATABASE_URL to the bot's database, or run "
        "`connect-access db upgrade` to create it")
    assert not (tmp_path / "connect-access.db").exists()

    code, output = invoke("db", "upgrade")
    assert code == 0
    assert output.strip() == (f"database sqlite:///./connect-access.db (the default: "
                              f"DATABASE_URL is not set) upgraded from nothing to "
                              f"{migration_head()}")
    assert (tmp_path / "connect-access.db").exists()


def test_an_unreachable_database_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://bot:secret@127.0.0.1:9/bot?connect_timeout=2"
    monkeypatch.setenv("DATABASE_URL", url)
    code, output = invoke("audit", "verify")
    assert code == 2
    assert output.startswith("error: cannot connect to the database "
                             "postgresql+psycopg://bot:***@127.0.0.1:9/bot")
    assert "check DATABASE_URL and that the database server is up" in output
    assert "secret" not in output
    code, output = invoke("db", "upgrade")
    assert code == 1
    assert "could not migrate the database postgresql+psycopg://bot:***@" in output


def test_db_upgrade_json(empty_database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    code, output = invoke("db", "upgrade", "--json")
    assert code == 0
    report = json.loads(output)
    assert (report["from"], report["to"], report["at_head"]) == (None, migration_head(), True)
    code, output = invoke("db", "upgrade", "--json")
    assert json.loads(output)["from"] == migration_head()


def test_audit_verify_json(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    code, output = invoke("audit", "verify", "--json")
    assert code == 0
    report = json.loads(output)
    assert report["ok"] is True and report["events"] == 0


def test_reconcile_json(database_url: str, fake_aws: None, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "connect-access.yaml"
    config.write_text(yaml.safe_dump({"instances": [{
        "alias": "prod", "arn": "arn:aws:connect:us-east-1:123456789012:instance/"
                                "11111111-2222-3333-4444-555555555555"}]}))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CONNECT_ACCESS_CONFIG", str(config))
    code, report = invoke_json("reconcile", "--dry-run", "--json")
    assert code == 0, report
    assert report == {"dry_run": True, "findings": [], "unverifiable": [], "conflicts": [],
                      "failed": 0, "unchecked": 0}


def test_catalog_validate_json() -> None:
    code, output = invoke("catalog", "validate", "--json")
    assert code == 0
    report = json.loads(output)
    assert report["valid"] is True and report["entries"] == 64 and report["faults"] == []


def test_version_and_python_dash_m() -> None:
    code, output = invoke("--version")
    assert (code, output) == (0, f"connect-access {__version__}\n")
    completed = subprocess.run([sys.executable, "-m", "bot", "--version"], capture_output=True,
                               text=True, timeout=60, check=False)
    assert completed.returncode == 0 and completed.stdout == output


def _release(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The Procfile's release (`alembic upgrade head`) from the project root."""
    from bot.db import PROJECT_ROOT

    alembic = str(Path(sys.executable).with_name("alembic"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LOG_", "DATABASE_URL"))}
    return subprocess.run([alembic, "upgrade", "head"], cwd=PROJECT_ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120, check=False)


def test_release_logs_its_migrations_in_json(tmp_path: Path) -> None:
    completed = _release({"DATABASE_URL": f"sqlite:///{tmp_path / 'release.db'}",
                          "LOG_FORMAT": "json"})
    assert completed.returncode == 0, completed.stderr
    lines = [json.loads(line) for line in completed.stderr.splitlines()]
    assert all(line["process"] == "release" for line in lines)
    assert any(line["message"].startswith("Running upgrade ") and
               migration_head() in line["message"] for line in lines)


def test_release_on_an_unreachable_database_says_so_without_a_traceback() -> None:
    completed = _release({"DATABASE_URL": "postgresql+psycopg://bot:pw@127.0.0.1:9/bot"})
    assert completed.returncode != 0
    assert "cannot connect to the database postgresql+psycopg://bot:***@127.0.0.1:9/bot" in \
        completed.stderr
    assert "Traceback" not in completed.stderr and ":pw@" not in completed.stderr
