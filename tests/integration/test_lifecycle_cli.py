"""`connect-access grants list` over grants made through the lifecycle."""

from __future__ import annotations

import json
from datetime import timedelta

from doubles import FakeClock
from typer.testing import CliRunner

from bot.cli import build_cli
from bot.lifecycle import RequestService

WRITE = "telephony/enable-disable-telephony-options"


def test_grants_list_shows_state_expiry_and_lag(database_url: str,
                                                request_service: RequestService,
                                                clock: FakeClock) -> None:
    done = request_service.submit(requester="U0ALICE", entry_id=WRITE, reason="incident INC-a",
                                  duration=timedelta(hours=1)).id
    request_service.approve(done, "U0LEAD01")
    clock.advance(timedelta(hours=1, seconds=12))
    request_service.revoke_due_batch()
    live = request_service.submit(requester="U0BOB", entry_id=WRITE, reason="incident INC-b",
                                  duration=timedelta(hours=1)).id
    request_service.approve(live, "U0LEAD01")

    runner = CliRunner()
    env = {"DATABASE_URL": database_url}
    result = runner.invoke(build_cli(), ["grants", "list", "--json"], env=env)
    assert result.exit_code == 0, result.output
    rows = {row["request_id"]: row for row in json.loads(result.stdout)}
    assert rows[done]["state"] == "revoked" and rows[done]["revocation_lag_seconds"] == 12.0
    assert rows[done]["requester"] == "U0ALICE" and rows[done]["entry_id"] == WRITE
    assert rows[live]["state"] == "active" and rows[live]["revocation_lag_seconds"] is None

    result = runner.invoke(build_cli(), ["grants", "list", "--active"], env=env)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "REQUESTER", "ENTRY", "PRINCIPAL", "STATE", "EXPIRES",
                                "LAG"]
    assert len(lines) == 3 and "U0BOB" in lines[1] and "active" in lines[1]
    assert lines[-1] == "1 grant(s)"
    result = runner.invoke(build_cli(), ["grants", "list"], env=env)
    assert "12s" in result.stdout and result.stdout.splitlines()[-1] == "2 grant(s)"
