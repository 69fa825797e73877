"""The command-line contract for catalog and resolve (scripts depend on these shapes)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bot.catalog import DEFAULT_CATALOG_FILE
from bot.cli import build_cli

runner = CliRunner()


def test_resolve_json() -> None:
    result = runner.invoke(build_cli(), ["resolve", "Edit", "chat", "transcripts", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["status"] == "match"
    assert payload["matches"][0]["id"] == "data-storage/edit-chat-transcripts"
    assert payload["matches"][0]["section"] == "Chat transcripts section"


def test_resolve_bad_input_exits_2_with_message() -> None:
    result = runner.invoke(build_cli(), ["resolve", "x" * 600])
    assert result.exit_code == 2
    assert "keep it under 500" in result.output
    assert "Traceback" not in result.output


def test_catalog_validate_ok() -> None:
    result = runner.invoke(build_cli(), ["catalog", "validate"])
    assert result.exit_code == 0, result.output
    assert "64 entries" in result.stdout


def test_catalog_validate_fails_on_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "c.yaml"
    broken.write_text(DEFAULT_CATALOG_FILE.read_text().replace("connect:ListLexBots", "connect:ListLexBotz", 1))
    result = runner.invoke(build_cli(), ["catalog", "validate", "--catalog", str(broken)])
    assert result.exit_code == 1
    assert "ListLexBotz" in result.output and "c.yaml" in result.output


def test_catalog_list_json_and_show() -> None:
    listed = runner.invoke(build_cli(), ["catalog", "list", "--json"])
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert len(rows) == 64
    shown = runner.invoke(build_cli(), ["catalog", "show", "home/describe-instance"])
    assert shown.exit_code == 0
    assert "connect:DescribeInstanceAttributes" in shown.stdout  # the correction is shown
    missing = runner.invoke(build_cli(), ["catalog", "show", "edit chat transcripts"])
    assert missing.exit_code == 2
    assert "data-storage/edit-chat-transcripts" in missing.output
