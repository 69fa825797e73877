"""`connect-access serve --socket-mode` against the in-package fake Slack.

The fake's Socket Mode (bot.sandbox.fake_socket_mode) is checked first against slack_sdk's
own builtin client (what Bolt's SocketModeHandler uses) and against raw frames for the RFC
6455 rules; then the real command runs as a subprocess on SQLite with IAM on moto, and
commands, a button and a modal reach it as envelopes over the WebSocket.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from slack_flows_harness import ALICE, APPROVALS, CRITICAL_ENTRY, WRITE_ENTRY, operator_config
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from socket_mode_client import SocketModeSlackClient

from bot.sandbox.fake_slack import FakeSlack
from bot.sandbox.fake_socket_mode import (
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    accept_key,
    encode_frame,
)
from bot.sandbox.slack_client import SlackDriver
from bot.slack.blocks import answers, modals

GROUPS = {"S0LEADS": ["U0BOB", "U0CAROL"], "S0SECURITY": ["U0CAROL", "U0ERIN"]}
START_TIMEOUT = 30.0


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(usergroups=GROUPS) as slack:
        yield slack


# -- the fake against slack_sdk's client and raw frames ----------------------------------


def test_slack_sdk_client_connects_is_greeted_and_acks(fake: FakeSlack) -> None:
    web = WebClient(token=fake.bot_token, base_url=fake.api_url)
    with pytest.raises(SlackApiError) as refused:
        web.apps_connections_open(app_token="xapp-1-not-the-app-token")
    assert refused.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as bot_token:
        web.apps_connections_open(app_token=fake.bot_token)
    assert bot_token.value.response["error"] == "not_allowed_token_type"

    greeted: list[str] = []
    client = SocketModeClient(app_token=fake.app_token, web_client=web, ping_interval=0.2,
                              auto_reconnect_enabled=False, on_message_listeners=[greeted.append])

    def answer(client: SocketModeClient, request: SocketModeRequest) -> None:
        client.send_socket_mode_response(SocketModeResponse(
            envelope_id=request.envelope_id,
            payload={"text": f"got {len(request.payload['text'])} chars"}))

    client.socket_mode_request_listeners.append(answer)  # type: ignore[arg-type]
    try:
        client.connect()
        connection = fake.socket_mode.wait_for_connection()
        assert fake.calls("apps.connections.open")[-1].response["ok"] is True
        assert connection.headers["Sec-WebSocket-Version"] == "13"
        fake.socket_mode.wait_for(lambda _: greeted, what="the hello message")
        assert json.loads(greeted[0])["type"] == "hello"

        # A payload over 64 KiB takes the 8-byte length in both directions.
        envelope = fake.socket_mode.send_envelope("slash_commands", {"text": "x" * 70_000})
        ack = fake.socket_mode.wait_for_ack(envelope.envelope_id)
        assert ack.payload == {"text": "got 70000 chars"}
        assert ack.connection == connection.id

        # The client pings (and takes the fake's pongs: it would drop a connection that
        # had none for 4 intervals); the fake's own pings get pongs with their payload.
        fake.socket_mode.ping(b"are you there")
        fake.socket_mode.wait_for(
            lambda hub: hub.connections()[-1].pongs == [b"are you there"]
            and hub.connections()[-1].pings >= 3,
            what="pings answered both ways")
        assert client.is_connected()
    finally:
        client.close()
    closed = fake.socket_mode.wait_for_close(connection.id)
    assert closed.other_messages == []  # nothing but acks came over the socket


@dataclass
class RawClient:
    """A hand-made WebSocket client, for what slack_sdk never sends."""

    sock: socket.socket
    buffer: bytes = b""

    @classmethod
    def connect(cls, fake: FakeSlack, url: str | None = None, version: str = "13"
                ) -> tuple[RawClient, int, dict[str, str]]:
        url = url or WebClient(base_url=fake.api_url).apps_connections_open(
            app_token=fake.app_token)["url"]
        host_port, _, path = url.removeprefix("ws://").partition("/")
        host, _, port = host_port.partition(":")
        key = base64.b64encode(os.urandom(16)).decode()
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(
            f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: {version}\r\n\r\n".encode())
        client = cls(sock)
        while b"\r\n\r\n" not in client.buffer:
            client._fill()
        head, _, client.buffer = client.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines)}
        status = int(status_line.split()[1])
        if status == 101:
            assert headers["sec-websocket-accept"] == accept_key(key)
        return client, status, headers

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buffer += data

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def send(self, opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True
             ) -> None:
        self.sock.sendall(encode_frame(opcode, payload, fin=fin,
                                       mask=os.urandom(4) if masked else None))

    def receive(self) -> tuple[int, bytes]:
        """One frame from the server, which must come unmasked."""
        first, second = self._take(2)
        assert second & 0x80 == 0, "a server must not mask its frames"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, self._take(length)


@pytest.fixture
def raw_clients() -> Iterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for client in opened:
        client.sock.close()


def test_the_fake_keeps_the_rfc_6455_rules(fake: FakeSlack, raw_clients: list[RawClient]
                                           ) -> None:
    def connect(url: str | None = None, version: str = "13") -> tuple[RawClient, int]:
        client, status, _ = RawClient.connect(fake, url, version)
        raw_clients.append(client)
        return client, status

    # Fragmented text, pings and the closing handshake.
    client, status = connect()
    assert status == 101
    opcode, hello = client.receive()
    assert opcode == OP_TEXT and json.loads(hello)["type"] == "hello"
    client.send(OP_TEXT, b'{"envelope_id": "E1", ', fin=False)
    client.send(OP_PING, b"in between")  # control frames may come between fragments
    client.send(OP_CONTINUATION, b'"payload": {"text": "caf\xc3\xa9"}}')
    assert client.receive() == (OP_PONG, b"in between")
    ack = fake.socket_mode.wait_for_ack("E1")
    assert ack.payload == {"text": "café"}
    client.send(OP_CLOSE, struct.pack("!H", CLOSE_NORMAL))
    assert client.receive() == (OP_CLOSE, struct.pack("!H", CLOSE_NORMAL))
    assert fake.socket_mode.wait_for_close(1).close_code == CLOSE_NORMAL

    # An unmasked client frame fails the connection with 1002.
    client, status = connect()
    client.receive()  # hello
    client.send(OP_TEXT, b'{"envelope_id": "E2"}', masked=False)
    opcode, reason = client.receive()
    assert opcode == OP_CLOSE and struct.unpack("!H", reason[:2])[0] == CLOSE_PROTOCOL_ERROR
    assert fake.socket_mode.wait_for_close(2).close_code == CLOSE_PROTOCOL_ERROR
    assert fake.socket_mode.acks("E2") == []

    # Handshakes the fake refuses: a used ticket, a missing one, another protocol version.
    used = fake.calls("apps.connections.open")[0].response["url"]
    assert connect(used)[1] == 401
    assert connect(used.partition("?")[0])[1] == 401
    assert connect(version="8")[1] == 426
    assert len(fake.socket_mode.connections()) == 2


# -- connect-access serve --socket-mode ------------------------------------------------------


@pytest.fixture
def serve_env(fake: FakeSlack, aws_env: str, _sqlite_template: Path, tmp_path: Path
              ) -> dict[str, str]:
    """The environment of `connect-access serve --socket-mode`: SQLite migrated to head,
    IAM on moto (aws_env also put its fake credentials in os.environ), Slack on the fake.
    No signing secret: Socket Mode does not need one."""
    database = tmp_path / "socket.db"
    shutil.copyfile(_sqlite_template, database)
    config = tmp_path / "connect-access.yaml"
    config.write_text(yaml.safe_dump(operator_config()))
    env = {
        **os.environ,
        "SLACK_BOT_TOKEN": fake.bot_token,
        "SLACK_APP_TOKEN": fake.app_token,
        "SLACK_API_URL": fake.api_url,
        "DATABASE_URL": f"sqlite:///{database}",
        "CONNECT_ACCESS_CONFIG": str(config),
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": aws_env,
    }
    env.pop("SLACK_SIGNING_SECRET", None)
    return env


SERVE = [sys.executable, "-c", "from bot.cli import main; main()", "serve", "--socket-mode"]


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=20)


@pytest.fixture
def served(fake: FakeSlack, serve_env: dict[str, str], tmp_path: Path) -> Iterator[Served]:
    """`connect-access serve --socket-mode` in a subprocess, connected to the fake."""
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(SERVE, env=serve_env, stdout=log, stderr=subprocess.STDOUT)
        served = Served(process, log_path)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not [c for c in fake.socket_mode.connections() if c.open]:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"serve --socket-mode did not connect:\n{served.output()}")
                time.sleep(0.05)
            yield served
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def shown(answer: dict[str, Any]) -> str:
    return json.dumps(answer)


@pytest.mark.slow
def test_socket_mode_serves_commands_buttons_and_modals(fake: FakeSlack, served: Served
                                                        ) -> None:
    client = SocketModeSlackClient(fake, ack_timeout=10)
    driver = SlackDriver(fake, client, timeout=15)

    # A command that needs the database: an empty ack for its envelope, then the answer
    # from the lazy listener on the response_url.
    url = fake.response_url()
    result = client.command(ALICE, "status", response_url=url)
    envelope = client.last_envelope
    assert envelope is not None and envelope.type == "slash_commands"
    assert [a.payload for a in fake.socket_mode.acks(envelope.envelope_id)] == [None]
    assert result.body == ""
    assert "Your requests" in shown(driver.response_to(url).body)

    # A catalog lookup: the user sees the entry (in the ack's payload or on response_url).
    lookup = driver.command(ALICE, CRITICAL_ENTRY)
    assert CRITICAL_ENTRY in shown(lookup.body)

    # The Request button (a block_actions envelope) makes the app open the modal.
    preview = driver.command(ALICE, WRITE_ENTRY)
    assert WRITE_ENTRY in shown(preview.body)
    opened = len(fake.calls("views.open"))
    driver.click_response(ALICE, preview, answers.REQUEST_BUTTON)
    click = client.last_envelope
    assert click is not None and click.type == "interactive"
    assert click.payload["type"] == "block_actions"
    assert fake.socket_mode.acks(click.envelope_id)
    modal = driver.wait_for_opened_view(opened + 1)
    assert modal["callback_id"] == modals.REQUEST_MODAL

    # Submitting the modal (a view_submission envelope) posts the approval message.
    posted = len(fake.calls("chat.postMessage"))
    reason = "Socket Mode escalation INC-77"
    submitted = driver.submit(ALICE, modal, {"instance": "prod", "duration": "3600",
                                             "reason": reason})
    assert (submitted.json() or {}).get("response_action") == "update"  # in the ack payload
    approval = fake.wait_for(
        lambda f: [c for c in f.calls("chat.postMessage")[posted:]
                   if c.response.get("ok") and c.response["channel"] == APPROVALS],
        timeout=15, what="the approval message in the approvals channel")[0]
    message = fake.message(APPROVALS, approval.response["ts"])
    assert reason in json.dumps(message.blocks)
    assert "approve_request" in json.dumps(message.blocks)

    # Every envelope got exactly one ack, on the one connection; SIGTERM stops cleanly.
    acked = [a.envelope_id for a in fake.socket_mode.acks()]
    assert sorted(acked) == sorted(e.envelope_id for e in fake.socket_mode.envelopes())
    connection = fake.socket_mode.connections()[0]
    assert len(fake.socket_mode.connections()) == 1
    assert served.stop(signal.SIGTERM) == 0
    assert fake.socket_mode.wait_for_close(connection.id)
    assert "SIGTERM: stopping" in served.output()
    assert "Traceback" not in served.output()


@pytest.mark.slow
def test_socket_mode_stops_cleanly_on_ctrl_c(fake: FakeSlack, served: Served) -> None:
    connection = fake.socket_mode.wait_for_connection()
    assert served.stop(signal.SIGINT) == 0
    assert fake.socket_mode.wait_for_close(connection.id)
    assert "SIGINT: stopping" in served.output()
    assert "Traceback" not in served.output()
    assert "KeyboardInterrupt" not in served.output()


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(SERVE, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.slow
def test_a_wrong_app_token_stops_serve_naming_slack_app_token(
    fake: FakeSlack, serve_env: dict[str, str]
) -> None:
    result = run_serve({**serve_env, "SLACK_APP_TOKEN": "xapp-1-A0CONNECT-revoked"})
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: SLACK_APP_TOKEN: Slack at ")
    assert "refused the app-level token (invalid_auth)" in last_line
    assert "Traceback" not in result.stderr
    assert [c.response["error"] for c in fake.calls("apps.connections.open")] == ["invalid_auth"]
    assert fake.socket_mode.connections() == []


@pytest.mark.slow
def test_a_websocket_that_cannot_be_opened_stops_serve(
    fake: FakeSlack, serve_env: dict[str, str]
) -> None:
    fake.socket_mode.refuse_connections = True
    result = run_serve(serve_env)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: SLACK_API_URL: ")
    assert "the WebSocket at 127.0.0.1:" in last_line and "could not be opened" in last_line
    assert "Traceback" not in result.stderr
    assert fake.socket_mode.connections() == []
