"""The bot deployed as the Procfile deploys it, for the tests of its production topology:
`connect-access serve` (gunicorn) and `connect-access scheduler`, each a process of its own
with its own Slack client, against moto over HTTP (behind a fault injector) and the fake
Slack Web API in the test process, on a real database.

The test process only plays people (signed requests to the served app, through the
sandbox's SlackDriver) and looks at what reached Slack (the fake's records), IAM (moto) and
the database; it never sends a notification itself.
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
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
import yaml
from moto.server import ThreadedMotoServer
from server_process import free_port
from sqlalchemy import select, update

from bot.db import SessionFactory, make_engine, make_session_factory
from bot.models import AccessRequest, Grant
from bot.sandbox.fake_slack import FakeSlack, Message
from bot.sandbox.polling import wait_until as wait_for  # re-exported: the tests wait with it
from bot.sandbox.slack_client import SlackClient, SlackDriver

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
INSTANCE_ARN = f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/11111111-2222-3333-4444-555555555555"
SIGNING_SECRET = "topology-signing-secret"
LEAD = "U0LEAD01"
APPROVALS, ALERTS = "C0APPROVALS", "C0ALERTS"
CLI = str(Path(sys.executable).parent / "connect-access")
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
}
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
     "Action": "sts:AssumeRole"}]})


class IamFaults:
    """WSGI middleware in front of moto: counts IAM actions per role and policy, refuses
    chosen actions on chosen roles with an IAM error, and can hold chosen actions at a
    gate (the request reaches moto once the gate opens, whoever sent it)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.refusals: dict[tuple[str, str], str] = {}  # (action, role) -> error code
        self.gated: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.held = 0
        self._lock = threading.Lock()

    def refuse(self, action: str, role: str, code: str = "AccessDenied") -> None:
        with self._lock:
            self.refusals[(action, role)] = code

    def heal(self) -> None:
        with self._lock:
            self.refusals.clear()

    def hold(self, action: str) -> None:
        self.gated.add(action)
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        form = parse_qs(body.decode(errors="replace"))
        action = (form.get("Action") or [""])[0]
        role = (form.get("RoleName") or [""])[0]
        with self._lock:
            self.counts[(action, role, (form.get("PolicyName") or [""])[0])] += 1
        if action in self.gated and not self.gate.is_set():
            with self._lock:
                self.held += 1
            self.gate.wait(120)
        with self._lock:  # decided once the request goes on, as IAM would
            code = self.refusals.get((action, role))
        if code is not None:
            error = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>"
                     f"injected: {action} refused</Message></Error>"
                     "<RequestId>injected</RequestId></ErrorResponse>").encode()
            start_response("403 Forbidden", [("Content-Type", "text/xml"),
                                              ("Content-Length", str(len(error)))])
            return [error]
        return self.app(environ, start_response)

    def count(self, action: str, role: str | None = None) -> int:
        with self._lock:
            return sum(n for (a, r, _), n in self.counts.items()
                       if a == action and (role is None or r == role))


def start_moto() -> tuple[ThreadedMotoServer, str, IamFaults]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    faults = IamFaults(server._server.app)  # type: ignore[union-attr]
    server._server.app = faults  # type: ignore[union-attr]
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}", faults


class Process:
    """A `connect-access` process with its output in a file; SIGKILL takes its whole
    process group (gunicorn's workers with its arbiter)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen([CLI, *args], env=env, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.running():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.running():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


class Topology:
    """One deployment: its config, database, moto, the fake Slack, and its processes."""

    def __init__(self, tmp_path: Path, database_url: str, moto_url: str, faults: IamFaults,
                 fake: FakeSlack, users: list[str], timings: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.moto_url = moto_url
        self.faults = faults
        self.fake = fake
        suffix = uuid.uuid4().hex[:6]
        self.roles = {user: f"{user.lower()}-{suffix}" for user in users}
        tier = {"channel": APPROVALS, "approvers": [LEAD], "approvals": 1}
        self.config = {
            "instances": [{"alias": "prod", "arn": INSTANCE_ARN}],
            "principals": {u: self.arn(u) for u in users},
            "routing": {"tiers": {t: dict(tier) for t in ("read", "write", "critical")}},
            "timings": timings,
            "alerts": {"channel": ALERTS},
        }
        self.config_path = tmp_path / "connect-access.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.iam = boto3.client("iam", region_name=REGION, endpoint_url=moto_url,
                                aws_access_key_id="testing", aws_secret_access_key="testing")
        for role in self.roles.values():
            self.iam.create_role(RoleName=role, AssumeRolePolicyDocument=TRUST)
        self.engine = make_engine(database_url)
        self.sessions: SessionFactory = make_session_factory(self.engine)
        self.processes: list[Process] = []
        self.web_url = ""
        self.driver: SlackDriver | None = None

    def arn(self, user: str) -> str:
        return f"arn:aws:iam::{ACCOUNT}:role/{self.roles[user]}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLACK_", "AWS_", "CONNECT_ACCESS_"))}
        env.update(FAKE_CREDENTIALS, DATABASE_URL=self.database_url,
                   CONNECT_ACCESS_CONFIG=str(self.config_path), AWS_ENDPOINT_URL=self.moto_url,
                   AWS_CONFIG_FILE=str(self.tmp_path / "no-aws-config"),
                   AWS_SHARED_CREDENTIALS_FILE=str(self.tmp_path / "no-aws-credentials"),
                   SLACK_BOT_TOKEN=self.fake.bot_token, SLACK_API_URL=self.fake.api_url,
                   SLACK_SIGNING_SECRET=SIGNING_SECRET)
        return env

    # -- processes --------------------------------------------------------------------

    def serve(self, *extra: str) -> Process:
        port = free_port()
        process = Process(["serve", "--port", str(port), "--workers", "1", "--threads", "4",
                           *extra], self.env(), self.tmp_path / f"web-{port}.log")
        self.processes.append(process)

        def listening() -> bool:
            if not process.running():
                raise AssertionError(f"serve exited:\n{process.output()}")
            import socket
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_for(listening, 60, "the web process to listen")
        self.web_url = f"http://127.0.0.1:{port}/slack/events"
        client = SlackClient(self.web_url, SIGNING_SECRET,
                             response_url_factory=self.fake.response_url)
        self.driver = SlackDriver(self.fake, client, timeout=20.0)
        return process

    def scheduler(self) -> Process:
        process = Process(["scheduler", "--revoke-workers", "2"],
                          self.env(), self.tmp_path / f"scheduler-{len(self.processes)}.log")
        self.processes.append(process)
        return process

    def close(self) -> None:
        self.faults.release()
        for process in self.processes:
            process.stop()
        self.engine.dispose()

    # -- the database -----------------------------------------------------------------

    def request(self, request_id: int) -> AccessRequest:
        with self.sessions() as session:
            return session.get_one(AccessRequest, request_id)

    def grants_of(self, request_id: int) -> list[Grant]:
        with self.sessions() as session:
            return list(session.execute(
                select(Grant).where(Grant.request_id == request_id)
                .order_by(Grant.created_at)).scalars())

    def request_ids(self) -> list[int]:
        with self.sessions() as session:
            return list(session.execute(
                select(AccessRequest.id).order_by(AccessRequest.id)).scalars())

    def states(self) -> Counter[str]:
        with self.sessions() as session:
            return Counter(session.execute(select(AccessRequest.state)).scalars())

    def move_expiry(self, request_id: int, seconds_from_now: float) -> None:
        """Move the active grant's end (the clock moved): the scheduler reads it from the
        database like any other grant."""
        with self.sessions.begin() as session:
            session.execute(update(Grant).where(Grant.request_id == request_id,
                                                Grant.state == "active")
                            .values(expires_at=datetime.now(UTC)
                                    + timedelta(seconds=seconds_from_now)))

    # -- IAM and Slack ----------------------------------------------------------------

    def policies_on(self, user: str) -> list[str]:
        names = self.iam.list_role_policies(RoleName=self.roles[user])["PolicyNames"]
        return sorted(n for n in names if n.startswith("connect-access-"))

    def messages(self, channel: str) -> list[Message]:
        return self.fake.messages(channel)

    def alerts(self, containing: str = "") -> list[Message]:
        return [m for m in self.fake.messages(ALERTS)
                if containing in m.text + json.dumps(m.blocks)]


def shown(message: Message) -> str:
    return message.text + "\n" + json.dumps(message.blocks)


# Buttons that act on the request (See permissions only shows what it grants).
ACTING_BUTTONS = frozenset({"approve_request", "deny_request", "extend_grant", "end_grant",
                            "cancel_request"})


def has_buttons(message: Message) -> bool:
    """Whether the message still offers a button that would act on the request."""
    return any(element.get("action_id") in ACTING_BUTTONS
               for block in message.blocks if block.get("type") == "actions"
               for element in block.get("elements", []))


def make_topology(tmp_path: Path, database_url: str, users: list[str],
                  timings: dict[str, str]) -> Iterator[Topology]:
    server, url, faults = start_moto()
    try:
        with FakeSlack() as fake:
            topology = Topology(tmp_path, database_url, url, faults, fake, users, timings)
            try:
                yield topology
            finally:
                topology.close()
    finally:
        server.stop()
