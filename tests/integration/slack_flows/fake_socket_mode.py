"""Slack's Socket Mode, faked for the tests that drive the app over it (the demo drives the
app over HTTP only, so this lives under tests/, not bot/sandbox/).

`SocketModeFakeSlack` is a FakeSlack whose `apps.connections.open` (app-level token) hands
out a one-use `ws://127.0.0.1:<port>/link/?ticket=...` URL. Its `socket_mode` hub serves that
URL with the `websockets` library's threaded server, which does the WebSocket protocol
(RFC 6455: handshake, masking, fragments, ping/pong, the closing handshake, failing a broken
peer with the right close code). The hub adds only what Slack does on top: one-use tickets,
the `hello` message, envelopes pushed to the newest connection, acks recorded with their
response payload, `disconnect` messages, and a switch that refuses every handshake.

slack_sdk's builtin client (what Bolt's default SocketModeHandler uses) connects to a
`ws://` URL whose port is not 443 without TLS, pings right after the handshake and every
`ping_interval` seconds (dropping a connection that had no pong for four intervals), and
acks with `{"envelope_id", "payload"?}`.

    with SocketModeFakeSlack() as slack:
        ...  # point SLACK_API_URL at slack.api_url; push with slack.socket_mode.send_envelope
"""

from __future__ import annotations

import contextlib
import http
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event
from websockets.sync.server import Server, ServerConnection, serve

from bot.sandbox.fake_slack import FakeSlack
from bot.sandbox.polling import wait_until

LINK_PATH = "/link/"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # far above any ack the bot sends
ENVELOPE_TYPES = frozenset({"slash_commands", "interactive", "events_api"})


class SocketModeTimeout(AssertionError):
    """What a test waited for on the socket did not happen in time."""


@dataclass(frozen=True)
class Envelope:
    """What the fake pushed to the app."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    connection: int
    at: float

    def to_json(self, retry_attempt: int | None = None, retry_reason: str | None = None
                ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "envelope_id": self.envelope_id,
            "type": self.type,
            "payload": self.payload,
            "accepts_response_payload": self.accepts_response_payload,
        }
        if retry_attempt is not None:
            message["retry_attempt"] = retry_attempt
            message["retry_reason"] = retry_reason or "timeout"
        return message


@dataclass(frozen=True)
class SocketAck:
    """An ack the app sent back: `payload` is its response (None for an empty ack)."""

    envelope_id: str
    payload: dict[str, Any] | None
    connection: int
    at: float


@dataclass
class SocketConnection:
    """One WebSocket session as the fake saw it."""

    id: int
    ticket: str
    headers: dict[str, str]
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None  # what the client sent, or what the fake failed it with
    pings: int = 0  # pings from the client (the library answers each with a pong)
    pongs: list[bytes] = field(default_factory=list)  # pongs the client sent
    other_messages: list[str] = field(default_factory=list)  # text that was no ack

    @property
    def open(self) -> bool:
        return self.closed_at is None


class SocketModeHub:
    """Everything Socket Mode in a SocketModeFakeSlack: the URLs it issued, the
    connections, the envelopes pushed and the acks received."""

    def __init__(self, *, app_id: str = "A0CONNECT", host: str = "127.0.0.1") -> None:
        self.app_id = app_id
        self._host = host
        self._lock = threading.Condition()
        self._tickets: set[str] = set()
        self._ids = itertools.count(1)
        self._connections: list[SocketConnection] = []
        self._records: dict[ServerConnection, SocketConnection] = {}
        self._greeted: dict[int, ServerConnection] = {}  # open connections sent `hello`
        self._envelopes: list[Envelope] = []
        self._acks: list[SocketAck] = []
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.refuse_connections = False  # answer the next handshakes with 503

    # -- the server ---------------------------------------------------------------------

    def start(self) -> SocketModeHub:
        hub = self

        class RecordingConnection(ServerConnection):
            """Counts the control frames the client sends; the library answers them."""

            def process_event(self, event: Event) -> None:
                super().process_event(event)
                if isinstance(event, Frame) and event.opcode in (Opcode.PING, Opcode.PONG):
                    hub._control_frame(self, event)

        self._server = serve(
            self._session, self._host, 0,
            process_request=self._check_request, process_response=self._take_ticket,
            compression=None,  # Slack's client offers no extension
            ping_interval=None,  # Slack's servers leave keepalive to the client
            max_size=MAX_MESSAGE_BYTES, server_header=None,
            # slack_sdk drops its socket without a close frame; stopping the fake waits this
            # long for a client that never answers one (after a reconnect it may not close
            # the new connection at all).
            close_timeout=1.0,
            create_connection=RecordingConnection,
        )
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="fake-socket-mode", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.shutdown()  # closes open connections with 1001 (going away)
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the hub first"
        port: int = self._server.socket.getsockname()[1]
        return port

    def issue_url(self) -> str:
        """A one-use WebSocket URL, as apps.connections.open returns."""
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        return f"ws://{self._host}:{self.port}{LINK_PATH}?ticket={ticket}&app_id={self.app_id}"

    def _check_request(self, connection: ServerConnection, request: Request
                       ) -> Response | None:
        """Before the library checks the handshake: what Slack refuses outright."""
        if self.refuse_connections:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      "socket mode is unavailable\n")
        if urlsplit(request.path).path != LINK_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        if request.headers.get("Sec-WebSocket-Version") != "13":
            # RFC 6455 4.4 asks for 426 naming the version; the library answers 400.
            response = connection.respond(http.HTTPStatus.UPGRADE_REQUIRED,
                                          "Sec-WebSocket-Version: 13 is required\n")
            response.headers["Sec-WebSocket-Version"] = "13"
            return response
        return None

    def _take_ticket(self, connection: ServerConnection, request: Request, response: Response
                     ) -> Response | None:
        """After the library accepted the handshake: the ticket is good for one connection."""
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            return None
        ticket = (parse_qs(urlsplit(request.path).query).get("ticket") or [""])[0]
        with self._lock:
            if ticket not in self._tickets:
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    "unknown or used ticket; call apps.connections.open again\n")
            self._tickets.discard(ticket)
            # Recorded before the 101 goes out: the client's first ping may follow at once.
            record = SocketConnection(next(self._ids), ticket, _headers(request.headers),
                                      time.time())
            self._connections.append(record)
            self._records[connection] = record
            self._lock.notify_all()
        return None

    def _session(self, connection: ServerConnection) -> None:
        """One accepted connection: hello, then every message until it closes."""
        with self._lock:
            record = self._records[connection]
            open_count = sum(1 for c in self._connections if c.open)
        try:
            connection.send(json.dumps({
                "type": "hello",
                "num_connections": open_count,
                "debug_info": {"host": "fake-slack", "build_number": 1,
                               "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id},
            }))
            with self._lock:
                self._greeted[record.id] = connection
                self._lock.notify_all()
            for message in connection:
                if isinstance(message, bytes):
                    connection.close(CloseCode.UNSUPPORTED_DATA, "Socket Mode speaks text frames")
                    break
                self._record_message(record, message)
        except ConnectionClosed:
            pass  # a client that broke the protocol: the library failed the connection
        finally:
            connection.wait_closed(timeout=5)
            protocol = connection.protocol
            closing = protocol.close_rcvd or protocol.close_sent
            with self._lock:
                self._greeted.pop(record.id, None)
                self._records.pop(connection, None)
                record.close_code = closing.code if closing is not None else None
                record.closed_at = time.time()
                self._lock.notify_all()

    def _control_frame(self, connection: ServerConnection, frame: Frame) -> None:
        with self._lock:
            record = self._records.get(connection)
            if record is None:
                return
            if frame.opcode is Opcode.PING:
                record.pings += 1
            else:
                record.pongs.append(bytes(frame.data))
            self._lock.notify_all()

    def _record_message(self, record: SocketConnection, text: str) -> None:
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            message = None
        with self._lock:
            if isinstance(message, dict) and isinstance(message.get("envelope_id"), str):
                payload = message.get("payload")
                self._acks.append(SocketAck(message["envelope_id"],
                                            payload if isinstance(payload, dict) else None,
                                            record.id, time.time()))
            else:
                record.other_messages.append(text)
            self._lock.notify_all()

    # -- what tests call ------------------------------------------------------------------

    def connections(self) -> list[SocketConnection]:
        with self._lock:
            return [replace(c, headers=dict(c.headers), pongs=list(c.pongs),
                            other_messages=list(c.other_messages)) for c in self._connections]

    def envelopes(self) -> list[Envelope]:
        with self._lock:
            return list(self._envelopes)

    def acks(self, envelope_id: str | None = None) -> list[SocketAck]:
        with self._lock:
            return [a for a in self._acks if envelope_id is None or a.envelope_id == envelope_id]

    def wait_for(self, found: Callable[[SocketModeHub], Any], timeout: float = 5.0,
                 what: str = "condition") -> Any:
        """Poll until `found(self)` is truthy and return it; fail after `timeout` seconds."""
        return wait_until(lambda: found(self), timeout, what, SocketModeTimeout, self._lock)

    def wait_for_connection(self, timeout: float = 5.0) -> SocketConnection:
        """The newest open connection that has been sent `hello`."""
        def greeted(hub: SocketModeHub) -> SocketConnection | None:
            with hub._lock:
                return next((c for c in reversed(hub._connections) if c.id in hub._greeted),
                            None)
        found: SocketConnection = self.wait_for(greeted, timeout,
                                                "an open Socket Mode connection")
        return found

    def wait_for_ack(self, envelope_id: str, timeout: float = 5.0) -> SocketAck:
        acks: list[SocketAck] = self.wait_for(lambda hub: hub.acks(envelope_id), timeout,
                                              f"the ack of envelope {envelope_id}")
        return acks[0]

    def wait_for_close(self, connection: int, timeout: float = 5.0) -> SocketConnection:
        found: SocketConnection = self.wait_for(
            lambda hub: next((c for c in hub.connections()
                              if c.id == connection and not c.open), None),
            timeout, f"connection {connection} to close")
        return found

    def _newest(self) -> tuple[int, ServerConnection]:
        with self._lock:
            if not self._greeted:
                raise ConnectionError("no app is connected over Socket Mode")
            newest = max(self._greeted)
            return newest, self._greeted[newest]

    def send_envelope(
        self,
        type: str,
        payload: Mapping[str, Any],
        *,
        accepts_response_payload: bool | None = None,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
    ) -> Envelope:
        """Push an envelope to the newest open connection, as Slack delivers each one to
        one of the app's connections. `accepts_response_payload` defaults to what Slack
        sets: true for slash commands and view submissions."""
        if type not in ENVELOPE_TYPES:
            raise ValueError(f"unknown envelope type {type!r}")
        if accepts_response_payload is None:
            accepts_response_payload = type == "slash_commands" or (
                type == "interactive"
                and payload.get("type") in ("view_submission", "block_suggestion"))
        connection_id, connection = self._newest()
        envelope = Envelope(str(uuid.uuid4()), type, dict(payload), accepts_response_payload,
                            connection_id, time.time())
        with self._lock:
            self._envelopes.append(envelope)
        connection.send(json.dumps(envelope.to_json(retry_attempt, retry_reason)))
        return envelope

    def ping(self, payload: bytes = b"") -> int:
        """Ping the newest open connection (Slack's servers do); returns its id. The pong
        shows up in `connections()[...].pongs`."""
        connection_id, connection = self._newest()
        connection.ping(payload)
        return connection_id

    def disconnect(self, reason: str = "refresh_requested") -> None:
        """Tell every connected app to reconnect, as Slack does before it closes a
        connection (`{"type": "disconnect"}`)."""
        with self._lock:
            connections = list(self._greeted.values())
        for connection in connections:
            with contextlib.suppress(ConnectionClosed):  # it went away on its own meanwhile
                connection.send(json.dumps({"type": "disconnect", "reason": reason,
                                            "debug_info": {"host": "fake-slack"}}))


def _headers(headers: Headers) -> dict[str, str]:
    # The names as the client spelt them (Headers looks them up case-insensitively).
    return dict(headers.raw_items())


class SocketModeFakeSlack(FakeSlack):
    """A FakeSlack that also speaks Socket Mode, on a port of its own."""

    def __init__(self, *, app_id: str = "A0CONNECT", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.socket_mode = SocketModeHub(app_id=app_id)

    def start(self) -> SocketModeFakeSlack:
        super().start()
        self.socket_mode.start()
        return self

    def stop(self) -> None:
        self.socket_mode.stop()
        super().stop()

    def __enter__(self) -> SocketModeFakeSlack:
        return self.start()

    def everything_shown(self) -> list[str]:
        # What a listener answered in its ack is shown to the user too.
        return [*super().everything_shown(),
                *(json.dumps(a.payload) for a in self.socket_mode.acks() if a.payload)]

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"url": self.socket_mode.issue_url()}
