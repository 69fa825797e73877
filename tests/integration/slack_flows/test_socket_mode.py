"""`connect-access serve --socket-mode` against the tests' fake Slack.

The fake's Socket Mode (fake_socket_mode, on the `websockets` library) is checked first
against slack_sdk's own builtin client (what Bolt's SocketModeHandler uses) and against a
client on the library's sans-I/O protocol for what slack_sdk never sends; then the real
command runs as a subprocess on SQLite with IAM on moto, and commands, a button and a modal
reach it as envelopes over the WebSocket.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_socket_mode import SocketModeFakeSlack
from slack_flows_harness import ALICE, APPROVALS, CRITICAL_ENTRY, WRITE_ENTRY, operator_config
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from socket_mode_client import SocketModeSlackClient
from websockets.client import ClientProtocol
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import Event
from websockets.uri import parse_uri

from bot.sandbox.slack_client import SlackDriver
from bot.slack.blocks import answers, modals

GROUPS = {"S0LEADS": ["U0BOB", "U0CAROL"], "S0SECURITY": ["U0CAROL", "U0ERIN"]}
START_TIMEOUT = 30.0


@pytest.fixture
def fake() -> Iterator[SocketModeFakeSlack]:
    with SocketModeFakeSlack(usergroups=GROUPS) as slack:
        yield slack


# -- the fake against slack_sdk's client and a raw client ---------------------------------


def test_slack_sdk_client_connects_is_greeted_and_acks(fake: SocketModeFakeSlack) -> None:
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
            and hub.connections()[-1].pings >= 5,
            what="pings answered both ways")
        assert client.is_connected()
    finally:
        client.close()
    closed = fake.socket_mode.wait_for_close(connection.id)
    assert closed.other_messages == []  # nothing but acks came over the socket


def test_a_disconnect_message_makes_the_client_reconnect_on_a_fresh_url(
    fake: SocketModeFakeSlack,
) -> None:
    web = WebClient(token=fake.bot_token, base_url=fake.api_url)
    client = SocketModeClient(app_token=fake.app_token, web_client=web, ping_interval=0.2)
    try:
        client.connect()
        first = fake.socket_mode.wait_for_connection()
        fake.socket_mode.disconnect()  # what Slack sends before it refreshes a connection
        second = fake.socket_mode.wait_for(
            lambda hub: next((c for c in hub.connections() if c.id != first.id and c.open),
                             None),
            timeout=10, what="a second connection")
        assert fake.socket_mode.wait_for_close(first.id, timeout=10)
        urls = [c.response["url"] for c in fake.calls("apps.connections.open")]
        assert len(urls) == 2 and second.ticket in urls[1]  # each URL is good once
        # Envelopes now go to the new connection.
        envelope = fake.socket_mode.send_envelope("events_api", {"type": "event_callback"})
        assert envelope.connection == second.id
    finally:
        client.close()


@dataclass
class RawClient:
    """A client on the library's sans-I/O protocol, for what slack_sdk never sends; it
    writes a frame itself only to break the rule that a client masks every frame."""

    sock: socket.socket
    protocol: ClientProtocol
    events: list[Event] = field(default_factory=list)

    @classmethod
    def connect(cls, fake: SocketModeFakeSlack, url: str | None = None, version: str = "13"
                ) -> tuple[RawClient, int]:
        url = url or WebClient(base_url=fake.api_url).apps_connections_open(
            app_token=fake.app_token)["url"]
        uri = parse_uri(url)
        protocol = ClientProtocol(uri)
        request = protocol.connect()
        del request.headers["Sec-WebSocket-Version"]
        request.headers["Sec-WebSocket-Version"] = version
        protocol.send_request(request)
        client = cls(socket.create_connection((uri.host, uri.port), timeout=5), protocol)
        client._flush()
        response = client._next_event()
        assert isinstance(response, Response)  # the library checked Sec-WebSocket-Accept
        return client, response.status_code

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def _next_event(self) -> Event:
        while not self.events:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.protocol.receive_data(data)
            self.events.extend(self.protocol.events_received())
        return self.events.pop(0)

    def send_text(self, data: bytes, *, fin: bool = True) -> None:
        self.protocol.send_text(data, fin=fin)
        self._flush()

    def send_continuation(self, data: bytes, *, fin: bool = True) -> None:
        self.protocol.send_continuation(data, fin=fin)
        self._flush()

    def send_ping(self, data: bytes) -> None:
        self.protocol.send_ping(data)
        self._flush()

    def send_close(self, code: CloseCode) -> None:
        self.protocol.send_close(code)
        self._flush()

    def send_unmasked_text(self, data: bytes) -> None:
        self.sock.sendall(Frame(Opcode.TEXT, data).serialize(mask=False))

    def receive(self) -> tuple[Opcode, bytes]:
        """One frame from the server (the protocol refuses a masked one)."""
        frame = self._next_event()
        assert isinstance(frame, Frame), frame
        return frame.opcode, bytes(frame.data)

    def receive_close(self) -> Close:
        """The server's close frame, then the end of its stream (a server closes the TCP
        connection first, RFC 6455 7.1.1); the client then closes its side."""
        opcode, data = self.receive()
        assert opcode is Opcode.CLOSE
        assert self.sock.recv(1) == b""
        self.sock.close()
        return Close.parse(data)


@pytest.fixture
def raw_clients() -> Iterator[list[RawClient]]:
    opened: list[RawClient] = []
    yield opened
    for client in opened:
        client.sock.close()


def test_the_fake_keeps_the_rfc_6455_rules(fake: SocketModeFakeSlack,
                                           raw_clients: list[RawClient]) -> None:
    def connect(url: str | None = None, version: str = "13") -> tuple[RawClient, int]:
        client, status = RawClient.connect(fake, url, version)
        raw_clients.append(client)
        return client, status

    # Fragmented text, pings and the closing handshake.
    client, status = connect()
    assert status == 101
    opcode, hello = client.receive()
    assert opcode is Opcode.TEXT and json.loads(hello)["type"] == "hello"
    client.send_text(b'{"envelope_id": "E1", ', fin=False)
    client.send_ping(b"in between")  # control frames may come between fragments
    client.send_continuation(b'"payload": {"text": "caf\xc3\xa9"}}')
    assert client.receive() == (Opcode.PONG, b"in between")
    ack = fake.socket_mode.wait_for_ack("E1")
    assert ack.payload == {"text": "café"}
    client.send_close(CloseCode.NORMAL_CLOSURE)
    assert client.receive_close() == Close(CloseCode.NORMAL_CLOSURE, "")  # echoed
    assert fake.socket_mode.wait_for_close(1).close_code == CloseCode.NORMAL_CLOSURE

    # An unmasked client frame fails the connection with 1002.
    client, status = connect()
    client.receive()  # hello
    client.send_unmasked_text(b'{"envelope_id": "E2"}')
    assert client.receive_close().code == CloseCode.PROTOCOL_ERROR
    assert fake.socket_mode.wait_for_close(2).close_code == CloseCode.PROTOCOL_ERROR
    assert fake.socket_mode.acks("E2") == []

    # Handshakes the fake refuses: a used ticket, a missing one, another protocol version.
    used = fake.calls("apps.connections.open")[0].response["url"]
    assert connect(used)[1] == 401
    assert connect(used.partition("?")[0])[1] == 401
    assert connect(version="8")[1] == 426
    assert len(fake.socket_mode.connections()) == 2


# -- connect-access serve --socket-mode ------------------------------------------------------


@pytest.fixture
def serve_env(fake: SocketModeFakeSlack, aws_env: str, _sqlite_template: Path, tmp_path: Path
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
def served(fake: SocketModeFakeSlack, serve_env: dict[str, str], tmp_path: Path
           ) -> Iterator[Served]:
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
def test_socket_mode_serves_commands_buttons_and_modals(fake: SocketModeFakeSlack,
                                                        served: Served) -> None:
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
def test_socket_mode_stops_cleanly_on_ctrl_c(fake: SocketModeFakeSlack, served: Served) -> None:
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
    fake: SocketModeFakeSlack, serve_env: dict[str, str]
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
    fake: SocketModeFakeSlack, serve_env: dict[str, str]
) -> None:
    fake.socket_mode.refuse_connections = True
    result = run_serve(serve_env)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: SLACK_API_URL: ")
    assert "the WebSocket at 127.0.0.1:" in last_line and "could not be opened" in last_line
    assert "Traceback" not in result.stderr
    assert fake.socket_mode.connections() == []
