"""`connect-access scheduler` as real processes against moto's HTTP server, the fake
Slack and a real database: revoke at expiry, catch up after SIGKILL, leader and standby on
PostgreSQL, the SQLite refusal, pending timeout and reminders.

The test process plays the web process: it creates grants through the lifecycle (real
IamGranter over HTTP, Slack wired as the web process wires it, so approval messages exist)
with a clock set back so that a one-minute grant expires seconds from now. Every
DeleteRolePolicy that reaches moto is counted, so a double revoke would show. What the
scheduler tells people is checked in the fake Slack's records, never in its log.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml
from doubles import FakeClock
from moto.server import ThreadedMotoServer
from sqlalchemy import select

from bot.lifecycle import GrantContext
from bot.models import AccessRequest, AuditEvent, Grant
from bot.ports import GrantPlan, PolicyDocument
from bot.runtime import Runtime, build_runtime
from bot.sandbox.fake_slack import FakeSlack, Message
from bot.settings import Settings

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
LEAD = "U0LEAD01"
CLI = str(Path(sys.executable).parent / "connect-access")
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
POSTGRES_ONLY = pytest.mark.parametrize(
    "db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
SQLITE_ONLY = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
}


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class DeleteCounter:
    """WSGI middleware in front of moto counting DeleteRolePolicy per (role, policy)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.deletes: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        form = parse_qs(body.decode(errors="replace"))
        if form.get("Action") == ["DeleteRolePolicy"]:
            with self._lock:
                self.deletes[(form["RoleName"][0], form["PolicyName"][0])] += 1
        return self.app(environ, start_response)


@pytest.fixture
def moto() -> Iterator[tuple[str, DeleteCounter]]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    # The werkzeug server calls `self.server.app`; wrapping it counts what reaches moto.
    counter = DeleteCounter(server._server.app)  # type: ignore[union-attr]
    server._server.app = counter  # type: ignore[union-attr]
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}", counter
    server.stop()


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)


class Deployment:
    """One bot deployment under test: config file, database, moto, and helpers to act as
    the web process and to run scheduler processes."""

    def __init__(self, tmp_path: Path, database_url: str, moto_url: str,
                 counter: DeleteCounter, timings: dict[str, str], fake: FakeSlack) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.moto_url = moto_url
        self.counter = counter
        suffix = uuid.uuid4().hex[:8]
        self.roles = {user: f"{user.lower()}-{suffix}" for user in ("U0ALICE", "U0BOB")}
        config = {
            "instances": [{"alias": "prod", "arn": f"arn:aws:connect:{REGION}:{ACCOUNT}:"
                                                   "instance/11111111-2222-3333-4444-555555555555"}],
            "principals": {u: f"arn:aws:iam::{ACCOUNT}:role/{r}" for u, r in self.roles.items()},
            "routing": {"tiers": {tier: {"channel": "C0APPROVALS", "approvers": [LEAD],
                                         "approvals": 1}
                                  for tier in ("read", "write", "critical")}},
            "timings": {"sweep_interval": "1s", **timings},
        }
        self.config_path = tmp_path / "connect-access.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.clock = FakeClock(datetime.now(UTC))
        self.fake = fake
        self.runtime: Runtime = build_runtime(
            Settings(database_url=database_url, connect_access_config=self.config_path,
                     aws_region=REGION, aws_endpoint_url=moto_url,
                     slack_bot_token=fake.bot_token, slack_api_url=fake.api_url),
            slack=True, clock=self.clock, plan_builder=small_plan_builder)
        iam = self.runtime.aws.iam()
        for role in self.roles.values():
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=TRUST)
        self.entries = [e.id for e in self.runtime.catalog]
        self.processes: list[SchedulerProcess] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
        env.update(FAKE_CREDENTIALS, DATABASE_URL=self.database_url,
                   CONNECT_ACCESS_CONFIG=str(self.config_path),
                   AWS_ENDPOINT_URL=self.moto_url,
                   SLACK_BOT_TOKEN=self.fake.bot_token, SLACK_API_URL=self.fake.api_url)
        return env

    def dms(self, user: str, containing: str) -> list[Message]:
        return [m for m in self.fake.dms(user) if containing in m.text]

    def scheduler(self, name: str) -> SchedulerProcess:
        process = SchedulerProcess(self.env(), self.tmp_path / f"{name}.log")
        self.processes.append(process)
        return process

    def grant_expiring_in(self, seconds: float, entry_index: int = 0,
                          requester: str = "U0ALICE") -> str:
        """Grant a one-minute request as if it had been approved (60 - seconds) ago."""
        self.clock.set(datetime.now(UTC) - timedelta(seconds=60 - seconds))
        service = self.runtime.service
        request = service.submit(requester=requester, entry_id=self.entries[entry_index],
                                 reason="incident 42", duration=timedelta(minutes=1))
        service.approve(request.id, LEAD)
        granted = service.get(request.id)
        assert granted.state == "active", granted.state
        return granted.grants[-1].id

    def grant(self, grant_id: str) -> Grant:
        with self.runtime.sessions() as session:
            return session.get_one(Grant, grant_id)

    def request(self, request_id: int) -> AccessRequest:
        with self.runtime.sessions() as session:
            return session.get_one(AccessRequest, request_id)

    def policies_on(self, requester: str = "U0ALICE") -> list[str]:
        iam = self.runtime.aws.iam()
        return list(iam.list_role_policies(RoleName=self.roles[requester])["PolicyNames"])

    def audit_actions(self, request_id: int) -> list[str]:
        with self.runtime.sessions() as session:
            return list(session.execute(
                select(AuditEvent.action).where(AuditEvent.request_id == request_id)
                .order_by(AuditEvent.seq)).scalars())

    def revoked(self, grant_id: str) -> bool:
        return self.grant(grant_id).state == "revoked"

    def close(self) -> None:
        for process in self.processes:
            process.kill()
        self.runtime.close()


class SchedulerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            # Batches of 2, so a drain of a few grants takes several.
            [CLI, "scheduler", "--revoke-workers", "2", "--batch-size", "2"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None and text not in self.log():
                raise AssertionError(f"scheduler exited {self.popen.returncode}:\n{self.log()}")
            return text in self.log()
        wait_for(seen, timeout, f"{text!r} in the scheduler log")

    def leads(self) -> bool:
        return "now the scheduler leader" in self.log()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)
        self._log.close()

    def terminate(self, timeout: float = 30) -> int:
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout)
        self._log.close()
        return code


def small_plan_builder(context: GrantContext) -> GrantPlan:
    """One small inline policy per grant; the scheduler never compiles, so the real
    compiler is not what these tests are about."""
    document = {"Version": "2012-10-17", "Statement": [{
        "Sid": "ConnectAccess", "Effect": "Allow", "Action": ["connect:DescribeInstance"],
        "Resource": context.instance_arn or "*",
        "Condition": {"DateLessThan": {
            "aws:CurrentTime": context.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")}}}]}
    return GrantPlan(
        grant_id=context.grant_id, principal_arn=context.principal_arn, kind="inline",
        policies=(PolicyDocument(name=f"connect-access-{context.grant_id}",
                                 document=document),),
        expires_at=context.expires_at, instance_arn=context.instance_arn)


def make_deployment(tmp_path: Path, database_url: str, moto: tuple[str, DeleteCounter],
                    **timings: str) -> Iterator[Deployment]:
    with FakeSlack() as fake:
        deployment = Deployment(tmp_path, database_url, moto[0], moto[1], timings, fake)
        try:
            yield deployment
        finally:
            deployment.close()


@pytest.fixture
def deployment(tmp_path: Path, database_url: str, moto: tuple[str, DeleteCounter]
               ) -> Iterator[Deployment]:
    yield from make_deployment(tmp_path, database_url, moto)


def run_cli(deployment: Deployment, *args: str) -> Any:
    result = subprocess.run([CLI, *args], env=deployment.env(), capture_output=True,
                            text=True, timeout=60, check=True)
    return json.loads(result.stdout)


def test_a_grant_is_revoked_at_expiry(deployment: Deployment) -> None:
    scheduler = deployment.scheduler("scheduler")
    scheduler.wait_for_log("now the scheduler leader")
    # Made by "the web process" while the leader sleeps: it finds the grant in the database.
    grant_id = deployment.grant_expiring_in(3)
    policy = f"connect-access-{grant_id}"
    assert deployment.policies_on() == [policy]

    wait_for(lambda: deployment.revoked(grant_id), 30, "the grant to be revoked")
    grant = deployment.grant(grant_id)
    assert grant.revoke_reason == "expiry"
    assert grant.revocation_lag_seconds is not None
    assert deployment.policies_on() == []
    assert deployment.counter.deletes == {(deployment.roles["U0ALICE"], policy): 1}
    assert deployment.request(grant.request_id).state == "revoked"

    stats = run_cli(deployment, "stats", "--json")
    assert stats["revoked_at_expiry"] == 1
    assert stats["lag_max_seconds"] == pytest.approx(grant.revocation_lag_seconds)
    assert stats["overdue_now"] == 0
    listed = run_cli(deployment, "grants", "list", "--json")
    assert listed[0]["revocation_lag_seconds"] == pytest.approx(grant.revocation_lag_seconds)

    # The scheduler itself told alice, in Slack.
    wait_for(lambda: deployment.dms("U0ALICE", "expired"), 10, "the expiry DM")
    assert scheduler.terminate() == 0


def test_a_grant_that_expired_while_the_scheduler_was_killed_is_revoked_at_start(
        deployment: Deployment) -> None:
    first = deployment.scheduler("first")
    first.wait_for_log("now the scheduler leader")
    grant_id = deployment.grant_expiring_in(4)
    first.kill()

    expires_at = deployment.grant(grant_id).expires_at
    wait_for(lambda: datetime.now(UTC) > expires_at + timedelta(seconds=1), 10,
             "the expiry to pass")
    assert deployment.grant(grant_id).state == "active"
    assert deployment.policies_on() == [f"connect-access-{grant_id}"]

    deployment.scheduler("second")
    wait_for(lambda: deployment.revoked(grant_id), 30, "the catch-up revoke at start")
    wait_for(lambda: deployment.dms("U0ALICE", "expired"), 10, "the expiry DM")
    assert deployment.policies_on() == []
    assert sum(deployment.counter.deletes.values()) == 1
    assert deployment.grant(grant_id).revocation_lag_seconds is not None


@POSTGRES_ONLY
def test_two_schedulers_never_double_revoke_and_the_standby_takes_over(
        deployment: Deployment) -> None:
    leader = deployment.scheduler("leader")
    leader.wait_for_log("now the scheduler leader")
    standby = deployment.scheduler("standby")
    standby.wait_for_log("waiting to become the scheduler leader")

    grant_ids = [deployment.grant_expiring_in(3, entry_index=i) for i in range(6)]
    wait_for(lambda: all(deployment.revoked(g) for g in grant_ids), 30,
             "every grant to be revoked")
    assert not standby.leads()
    role = deployment.roles["U0ALICE"]
    assert deployment.counter.deletes == {(role, f"connect-access-{g}"): 1 for g in grant_ids}
    for grant_id in grant_ids:
        actions = deployment.audit_actions(deployment.grant(grant_id).request_id)
        assert actions.count("revoking") == 1
        assert actions.count("revoked") == 1

    leader.kill()
    killed_at = time.monotonic()
    # Sweep interval is 1 s; allow for process scheduling on a loaded CI machine.
    wait_for(standby.leads, 10, "the standby to take over")
    took_over_after = time.monotonic() - killed_at
    late = deployment.grant_expiring_in(2, entry_index=10)
    wait_for(lambda: deployment.revoked(late), 30, "the new leader to revoke a grant")
    assert deployment.counter.deletes[(role, f"connect-access-{late}")] == 1
    assert sum(deployment.counter.deletes.values()) == len(grant_ids) + 1
    print(f"standby took over {took_over_after:.2f}s after the leader was killed")


@SQLITE_ONLY
def test_a_second_scheduler_on_sqlite_refuses_to_start(deployment: Deployment) -> None:
    first = deployment.scheduler("first")
    first.wait_for_log("now the scheduler leader")
    second = deployment.scheduler("second")
    code = second.popen.wait(30)
    assert code != 0
    assert "another scheduler is already running" in second.log()
    assert "use PostgreSQL to run a standby" in second.log()
    assert "Traceback" not in second.log()
    assert first.popen.poll() is None


@pytest.fixture
def quick_deployment(tmp_path: Path, database_url: str, moto: tuple[str, DeleteCounter]
                     ) -> Iterator[Deployment]:
    yield from make_deployment(tmp_path, database_url, moto, pending_ttl="5s",
                               pending_reminder_after="2s", remind_before_expiry="10m")


def test_pending_requests_time_out_and_reminders_are_sent_once(
        quick_deployment: Deployment) -> None:
    deployment = quick_deployment
    # Granted before the scheduler runs: the grant's request is backdated 30 s, past this
    # deployment's 5 s pending_ttl, so a sweep between its submit and approve (a loaded
    # machine widens that gap) would time it out.
    grant_id = deployment.grant_expiring_in(30, entry_index=1)
    scheduler = deployment.scheduler("scheduler")
    scheduler.wait_for_log("now the scheduler leader")
    deployment.clock.set(datetime.now(UTC))
    pending = deployment.runtime.service.submit(
        requester="U0BOB", entry_id=deployment.entries[0], reason="incident 43",
        duration=timedelta(minutes=30)).id

    wait_for(lambda: deployment.grant(grant_id).expiry_reminded_at is not None, 15,
             "the expiring-soon reminder")
    wait_for(lambda: deployment.request(pending).reminded_at is not None, 15,
             "the pending reminder to approvers")
    wait_for(lambda: deployment.request(pending).state == "timed_out", 20,
             "the pending request to time out")
    assert "approved" not in deployment.audit_actions(pending)
    # Stamped once and never again: later sweeps leave the stamps alone.
    reminded_at = deployment.request(pending).reminded_at
    expiry_reminded_at = deployment.grant(grant_id).expiry_reminded_at
    time.sleep(2.5)  # two more sweeps
    assert deployment.request(pending).reminded_at == reminded_at
    assert deployment.grant(grant_id).expiry_reminded_at == expiry_reminded_at
    # What reached Slack, once each: the approver reminder in the message's thread, the
    # "Extend / I'm done" DM, and the timeout (message updated, requester told).
    request = deployment.request(pending)
    assert request.approval_ts is not None and request.approval_channel is not None
    nudges = [m for m in deployment.fake.messages(request.approval_channel)
              if m.thread_ts == request.approval_ts]
    assert len(nudges) == 1 and f"#{pending}" in nudges[0].text
    (reminder,) = deployment.dms("U0ALICE", "Extend it, or end it now")
    actions = {e["action_id"] for b in reminder.blocks if b["type"] == "actions"
               for e in b["elements"]}
    assert {"extend_grant", "end_grant"} <= actions
    assert len(deployment.dms("U0BOB", "timed out")) == 1
    message = deployment.fake.message(request.approval_channel, request.approval_ts)
    assert "Timed out" in json.dumps(message.blocks)
    assert not any(e.get("action_id") in ("approve_request", "deny_request")
                   for b in message.blocks if b["type"] == "actions"
                   for e in b.get("elements", []))
    assert scheduler.terminate() == 0


def test_a_scheduler_on_an_unmigrated_database_says_what_to_do(
        empty_database_url: str, tmp_path: Path) -> None:
    config_path = tmp_path / "connect-access.yaml"
    config_path.write_text(yaml.safe_dump({
        "instances": [{"alias": "prod", "arn": f"arn:aws:connect:{REGION}:{ACCOUNT}:"
                                               "instance/11111111-2222-3333-4444-555555555555"}],
        "routing": {"tiers": {tier: {"channel": "C0APPROVALS", "approvers": [LEAD, "U0LEAD02"]}
                              for tier in ("read", "write", "critical")}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    env.update(FAKE_CREDENTIALS, DATABASE_URL=empty_database_url,
               CONNECT_ACCESS_CONFIG=str(config_path))
    result = subprocess.run([CLI, "scheduler"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert "connect-access db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_scheduler_refuses_to_start_without_a_config(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLACK_") and k != "CONNECT_ACCESS_CONFIG"}
    env.update(FAKE_CREDENTIALS, DATABASE_URL=database_url)
    result = subprocess.run([CLI, "scheduler"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: CONNECT_ACCESS_CONFIG: not set; point it at the operator YAML the web "
        "process uses (see deploy/connect-access.example.yaml)."]
