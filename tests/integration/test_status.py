"""The scheduler's state is visible to an operator: heartbeats (leader, standby, stale),
the last sweep and the overdue grants, through `connect-access status`; and the scheduler
process itself, in JSON logs, as a container runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from doubles import FakeClock
from sqlalchemy import select
from typer.testing import CliRunner

from bot.cli import build_cli
from bot.db import SessionFactory
from bot.heartbeat import HeartbeatWriter, scheduler_status
from bot.lifecycle import RequestService
from bot.models import SchedulerHeartbeat
from bot.scheduler import SweepResult

CLI = str(Path(sys.executable).with_name("connect-access"))
WRITE = "telephony/enable-disable-telephony-options"


class FakeScheduler:
    """What HeartbeatWriter reads from an ExpiryLoop."""

    def __init__(self) -> None:
        self.leading = False
        self.last_sweep: tuple[datetime, SweepResult] | None = None


def writer(session_factory: SessionFactory, clock: FakeClock, source: FakeScheduler,
           host: str, pid: int) -> HeartbeatWriter:
    return HeartbeatWriter(session_factory, clock, source, sweep_interval=timedelta(seconds=30),
                           host=host, pid=pid)


def test_status_shows_the_leader_its_last_sweep_and_a_standby(
        session_factory: SessionFactory, clock: FakeClock) -> None:
    leader_source, standby_source = FakeScheduler(), FakeScheduler()
    leader_source.leading = True
    leader_source.last_sweep = (clock.now(), SweepResult(revoked=2, timed_out=1, retried=0,
                                                         reminded=3, recovered=1))
    writer(session_factory, clock, leader_source, "host-a", 11).beat()
    writer(session_factory, clock, standby_source, "host-b", 22).beat()
    clock.advance(timedelta(seconds=5))

    report = scheduler_status(session_factory, clock.now())

    assert report["ok"] is True
    assert report["leader"] == "host-a:11"
    roles = {s["id"]: (s["role"], s["stale"]) for s in report["schedulers"]}
    assert roles == {"host-a:11": ("leader", False), "host-b:22": ("standby", False)}
    leader = next(s for s in report["schedulers"] if s["id"] == "host-a:11")
    assert leader["last_sweep"] == {"revoked": 2, "timed_out": 1, "retried": 0,
                                    "reminded": 3, "recovered": 1}
    assert leader["beat_age_seconds"] == 5.0
    assert report["overdue_grants"] == 0


def test_a_leader_that_stopped_beating_is_stale_and_status_is_not_ok(
        session_factory: SessionFactory, clock: FakeClock) -> None:
    source = FakeScheduler()
    source.leading = True
    writer(session_factory, clock, source, "host-a", 11).beat()
    clock.advance(timedelta(minutes=2))  # beats are every 10 s at most

    report = scheduler_status(session_factory, clock.now())

    assert report["ok"] is False
    assert report["leader"] is None
    assert [s["stale"] for s in report["schedulers"]] == [True]
    # A fresh standby on one host keeps that host's container healthy; another host's
    # stale leader does not make it unhealthy.
    writer(session_factory, clock, FakeScheduler(), "host-b", 22).beat()
    assert scheduler_status(session_factory, clock.now(), host="host-b")["ok"] is True
    assert scheduler_status(session_factory, clock.now(), host="host-a")["ok"] is False


def test_status_counts_grants_overdue_now(request_service: RequestService,
                                          session_factory: SessionFactory,
                                          clock: FakeClock) -> None:
    request_id = request_service.submit(requester="U0ALICE", entry_id=WRITE,
                                        reason="ticket CX-1", duration=timedelta(hours=1)).id
    request_service.approve(request_id, "U0LEAD01")
    assert request_service.get(request_id).state == "active"
    assert scheduler_status(session_factory, clock.now())["overdue_grants"] == 0

    report = scheduler_status(session_factory, clock.now() + timedelta(hours=1, seconds=90))

    assert report["overdue_grants"] == 1
    assert report["oldest_overdue_seconds"] == 90.0


def test_stopping_removes_the_heartbeat(session_factory: SessionFactory,
                                        clock: FakeClock) -> None:
    beat = writer(session_factory, clock, FakeScheduler(), "host-a", 11)
    beat.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with session_factory() as session:
            if session.get(SchedulerHeartbeat, "host-a:11") is not None:
                break
        time.sleep(0.05)
    beat.stop()
    with session_factory() as session:
        assert session.scalars(select(SchedulerHeartbeat)).all() == []


def test_status_command_json_and_exit_status(database_url: str, session_factory: SessionFactory,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    nobody = runner.invoke(build_cli(), ["status"])
    assert nobody.exit_code == 1
    assert "no scheduler has written a heartbeat" in nobody.output

    source = FakeScheduler()
    source.leading = True
    writer(session_factory, FakeClock(datetime.now(UTC)), source, "host-a", 11).beat()
    result = runner.invoke(build_cli(), ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["leader"] == "host-a:11"
    assert runner.invoke(build_cli(), ["status", "--quiet"]).output == ""


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_running_scheduler_leads_in_status_and_logs_json(database_url: str,
                                                           tmp_path: Path) -> None:
    config = tmp_path / "connect-access.yaml"
    config.write_text(yaml.safe_dump({
        "instances": [{"alias": "prod", "arn": "arn:aws:connect:us-east-1:111122223333:"
                                               "instance/11111111-2222-3333-4444-555555555555"}],
        "routing": {"tiers": {t: {"channel": "C0APPROVALS", "approvers": ["U0LEAD01", "U0LEAD02"]}
                              for t in ("read", "write", "critical")}},
        "timings": {"sweep_interval": "1s"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "LOG_"))}
    env.update(DATABASE_URL=database_url, CONNECT_ACCESS_CONFIG=str(config), LOG_FORMAT="json",
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_ENDPOINT_URL="http://127.0.0.1:9")  # never reached: nothing to revoke
    log_path = tmp_path / "scheduler.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([CLI, "scheduler"], env=env, stdout=log, stderr=log)
    try:
        def leader() -> dict[str, Any] | None:
            status = subprocess.run([CLI, "status", "--json"], env=env, capture_output=True,
                                    text=True, timeout=30, check=False)
            report = json.loads(status.stdout) if status.stdout else {}
            if report.get("leader") and report["schedulers"][0]["last_sweep"]:
                return report
            return None

        report = _wait_for(leader, 90, "the scheduler to lead and sweep")
        (item,) = report["schedulers"]
        assert item["pid"] == process.pid and item["role"] == "leader"
        assert item["sweep_interval_seconds"] == 1.0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    after = subprocess.run([CLI, "status", "--json"], env=env, capture_output=True, text=True,
                           timeout=30, check=False)
    assert after.returncode == 1 and json.loads(after.stdout)["schedulers"] == []

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert lines, "the scheduler logged nothing"
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "process", "pid", "message"}
        assert line["process"] == "scheduler" and line["pid"] == process.pid
    started = [line for line in lines if line["message"].startswith("connect-access ")]
    assert len(started) == 1 and "scheduler: sweep every 1s" in started[0]["message"]
    assert lines[-1]["message"] == "scheduler stopped"
