"""Slack's Socket Mode, faked for FakeSlack: a WebSocket endpoint on the fake's own port.

`apps.connections.open` (app-level token) hands out a one-use `ws://127.0.0.1:<port>/link/
?ticket=...` URL. A client that connects with it gets Slack's `hello` message; then a test
pushes envelopes to it (`send_envelope`) and waits for the app's acks (`wait_for_ack`),
which carry the ack's response payload when the listener answered in its ack.

The WebSocket side is RFC 6455 with the standard library only: the handshake, text frames
(fragmented or not), ping/pong and the closing handshake. As the RFC says, frames from
the client must be masked and frames from the server never are; a client frame that breaks
a rule ends the connection with the close code the RFC gives for it (1002, 1003, 1007,
1009). Extensions and subprotocols are not offered, so RSV bits must be zero.

slack_sdk's builtin client (what Bolt's default SocketModeHandler uses) connects to any
`ws://` URL whose port is not 443 without TLS, sends `Host`, `Upgrade`, `Connection`,
`Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13`, checks `Sec-WebSocket-Accept`, pings
right after the handshake and every `ping_interval` seconds (and drops a connection that
has not had a pong for four intervals), and acks with `{"envelope_id", "payload"?}`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bot.sandbox.polling import wait_until

LINK_PATH = "/link/"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})
KNOWN_OPCODES = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY}) | CONTROL_OPCODES

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR = 1000, 1001, 1002
CLOSE_UNSUPPORTED_DATA, CLOSE_NO_STATUS, CLOSE_INVALID_PAYLOAD = 1003, 1005, 1007
CLOSE_TOO_BIG = 1009

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # far above any ack the bot sends
ENVELOPE_TYPES = frozenset({"slash_commands", "interactive", "events_api"})


class ProtocolError(Exception):
    """The peer broke RFC 6455; `code` is the close code the RFC gives for it."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class SocketModeTimeout(AssertionError):
    """What a test waited for on the socket did not happen in time."""


# -- frames ------------------------------------------------------------------------------


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    digest = hashlib.sha1((key + WS_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR `data` with the 4-byte `key` (masking and unmasking are the same operation)."""
    if not data:
        return b""
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(data), "big"
    )


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True,
                 mask: bytes | None = None) -> bytes:
    """One frame; servers send them unmasked (`mask=None`), clients masked."""
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask is not None else 0
    length = len(payload)
    if length <= 125:
        head += bytes([mask_bit | length])
    elif length <= 0xFFFF:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if mask is None:
        return head + payload
    return head + mask + apply_mask(payload, mask)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:123]


@dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes  # unmasked
    masked: bool


def read_frame(read_exact: Callable[[int], bytes], *, max_bytes: int = MAX_MESSAGE_BYTES
               ) -> Frame:
    """Read one frame sent by a client. Raises EOFError when the stream ends and
    ProtocolError when the frame breaks the client's rules."""
    first, second = read_exact(2)
    if first & 0x70:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV bits set without an extension")
    fin, opcode = bool(first & 0x80), first & 0x0F
    if opcode not in KNOWN_OPCODES:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
    masked, length = bool(second & 0x80), second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read_exact(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", read_exact(8))
    if opcode in CONTROL_OPCODES and (length > 125 or not fin):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "control frames are short and unfragmented")
    if not masked:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a client must mask every frame")
    if length > max_bytes:
        raise ProtocolError(CLOSE_TOO_BIG, f"frame of {length} bytes")
    key = read_exact(4)
    return Frame(fin, opcode, apply_mask(read_exact(length), key), masked)


# -- records -----------------------------------------------------------------------------


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
    pings: int = 0  # pings from the client (each answered with a pong)
    pongs: list[bytes] = field(default_factory=list)  # answers to the fake's pings
    other_messages: list[str] = field(default_factory=list)  # text that was no ack

    @property
    def open(self) -> bool:
        return self.closed_at is None


class _Link:
    """The server side of one connection, running on the HTTP server's handler thread."""

    def __init__(self, record: SocketConnection, sock: socket.socket,
                 read_exact: Callable[[int], bytes]) -> None:
        self.record = record
        self.sock = sock
        self.read_exact = read_exact
        self.send_lock = threading.Lock()
        self.close_sent = False

    def send(self, opcode: int, payload: bytes = b"") -> None:
        with self.send_lock:
            if self.close_sent:
                raise ConnectionError("the fake already closed this connection")
            if opcode == OP_CLOSE:
                self.close_sent = True
            self.sock.sendall(encode_frame(opcode, payload))

    def send_text(self, message: Mapping[str, Any]) -> None:
        self.send(OP_TEXT, json.dumps(message).encode())

    def close(self, code: int, reason: str = "") -> None:
        with contextlib.suppress(OSError):
            self.send(OP_CLOSE, close_payload(code, reason))


class SocketModeHub:
    """Everything Socket Mode in a FakeSlack: the URLs it issued, the connections, the
    envelopes pushed and the acks received."""

    def __init__(self, *, app_id: str = "A0CONNECT") -> None:
        self.app_id = app_id
        self._lock = threading.Condition()
        self._tickets: set[str] = set()
        self._ids = itertools.count(1)
        self._connections: list[SocketConnection] = []
        self._links: dict[int, _Link] = {}
        self._envelopes: list[Envelope] = []
        self._acks: list[SocketAck] = []
        self.refuse_connections = False  # answer the next handshakes with 503

    # -- what apps.connections.open and the HTTP server call ------------------------------

    def issue_url(self, base_url: str) -> str:
        """A one-use WebSocket URL, as apps.connections.open returns; `base_url` is the
        fake's http:// address."""
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        host = urlsplit(base_url).netloc
        return f"ws://{host}{LINK_PATH}?ticket={ticket}&app_id={self.app_id}"

    @staticmethod
    def is_upgrade(request: BaseHTTPRequestHandler) -> bool:
        return urlsplit(request.path).path.rstrip("/") == LINK_PATH.rstrip("/") and (
            request.headers.get("Upgrade", "").lower() == "websocket"
        )

    def serve(self, request: BaseHTTPRequestHandler) -> None:
        """Handshake, hello, then read the client's frames until the connection ends."""
        request.close_connection = True
        ticket = (parse_qs(urlsplit(request.path).query).get("ticket") or [""])[0]
        key = request.headers.get("Sec-WebSocket-Key", "")
        refusal = self._refusal(request, ticket, key)
        if refusal is not None:
            status, text = refusal
            body = text.encode()
            request.send_response(status)
            request.send_header("Content-Type", "text/plain")
            request.send_header("Content-Length", str(len(body)))
            request.send_header("Connection", "close")
            request.end_headers()
            request.wfile.write(body)
            return
        sock: socket.socket = request.connection
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key).encode() + b"\r\n\r\n"
        )

        def read_exact(count: int) -> bytes:
            # rfile, not the socket: it may already hold bytes sent right after the handshake
            data = request.rfile.read(count) if count else b""
            if len(data) < count:
                raise EOFError("the client closed the connection")
            return data

        with self._lock:
            record = SocketConnection(next(self._ids), ticket, dict(request.headers.items()),
                                      time.time())
            link = _Link(record, sock, read_exact)
            self._connections.append(record)
            self._links[record.id] = link
            open_count = sum(1 for c in self._connections if c.open)
        try:
            link.send_text({
                "type": "hello",
                "num_connections": open_count,
                "debug_info": {"host": "fake-slack", "build_number": 1,
                               "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id},
            })
            self._receive(link)
        except OSError:
            pass
        finally:
            with self._lock:
                self._links.pop(record.id, None)
                record.closed_at = time.time()
                self._lock.notify_all()

    def _refusal(self, request: BaseHTTPRequestHandler, ticket: str, key: str
                 ) -> tuple[int, str] | None:
        if self.refuse_connections:
            return 503, "socket mode is unavailable"
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return 400, "Connection: Upgrade is required"
        if request.headers.get("Sec-WebSocket-Version") != "13":
            return 426, "Sec-WebSocket-Version: 13 is required"
        try:
            if len(base64.b64decode(key, validate=True)) != 16:
                raise ValueError(key)
        except ValueError:
            return 400, "Sec-WebSocket-Key must be 16 bytes in base64"
        with self._lock:
            if ticket not in self._tickets:
                return 401, "unknown or used ticket; call apps.connections.open again"
            self._tickets.discard(ticket)  # Slack's URLs are good for one connection
        return None

    def _receive(self, link: _Link) -> None:
        fragments: list[bytes] = []
        fragment_opcode: int | None = None
        while True:
            try:
                frame = read_frame(link.read_exact)
            except EOFError:
                return
            except ProtocolError as fault:
                self._fail(link, fault)
                return
            if frame.opcode == OP_PING:
                with self._lock:
                    link.record.pings += 1
                link.send(OP_PONG, frame.payload)
            elif frame.opcode == OP_PONG:
                with self._lock:
                    link.record.pongs.append(frame.payload)
                    self._lock.notify_all()
            elif frame.opcode == OP_CLOSE:
                code = CLOSE_NO_STATUS
                if len(frame.payload) >= 2:
                    (code,) = struct.unpack("!H", frame.payload[:2])
                with self._lock:
                    link.record.close_code = code
                if not link.close_sent:  # echo it: the closing handshake
                    link.close(CLOSE_NORMAL if code == CLOSE_NO_STATUS else code)
                return
            else:
                if frame.opcode == OP_CONTINUATION:
                    if fragment_opcode is None:
                        self._fail(link, ProtocolError(CLOSE_PROTOCOL_ERROR,
                                                       "continuation without a first frame"))
                        return
                elif fragment_opcode is not None:
                    self._fail(link, ProtocolError(CLOSE_PROTOCOL_ERROR,
                                                   "new message inside a fragmented one"))
                    return
                else:
                    fragment_opcode = frame.opcode
                fragments.append(frame.payload)
                if sum(len(f) for f in fragments) > MAX_MESSAGE_BYTES:
                    self._fail(link, ProtocolError(CLOSE_TOO_BIG, "message too big"))
                    return
                if not frame.fin:
                    continue
                opcode, data = fragment_opcode, b"".join(fragments)
                fragments, fragment_opcode = [], None
                if opcode == OP_BINARY:
                    self._fail(link, ProtocolError(CLOSE_UNSUPPORTED_DATA,
                                                   "Socket Mode speaks text frames"))
                    return
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    self._fail(link, ProtocolError(CLOSE_INVALID_PAYLOAD, "text is not UTF-8"))
                    return
                self._record_message(link.record, text)

    def _fail(self, link: _Link, fault: ProtocolError) -> None:
        with self._lock:
            link.record.close_code = fault.code
        link.close(fault.code, fault.reason)

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
            return [_copy_connection(c) for c in self._connections]

    def envelopes(self) -> list[Envelope]:
        with self._lock:
            return list(self._envelopes)

    def acks(self, envelope_id: str | None = None) -> list[SocketAck]:
        with self._lock:
            return [a for a in self._acks if envelope_id is None or a.envelope_id == envelope_id]

    def wait_for(self, found: Callable[[SocketModeHub], Any], timeout: float = 5.0,
                 what: str = "condition") -> Any:
        """Poll until `found(self)` is truthy and return it; fail after `timeout` seconds."""
        return wait_until(lambda: found(self), self._lock, timeout, what, SocketModeTimeout)

    def wait_for_connection(self, timeout: float = 5.0) -> SocketConnection:
        """The newest open connection (it has been sent `hello`)."""
        found: SocketConnection = self.wait_for(
            lambda hub: next((c for c in reversed(hub.connections()) if c.open), None),
            timeout, "an open Socket Mode connection")
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
        with self._lock:
            link = next((self._links[c.id] for c in reversed(self._connections)
                         if c.open and c.id in self._links), None)
            if link is None:
                raise ConnectionError("no app is connected over Socket Mode")
            envelope = Envelope(str(uuid.uuid4()), type, dict(payload),
                                accepts_response_payload, link.record.id, time.time())
            self._envelopes.append(envelope)
        link.send_text(envelope.to_json(retry_attempt, retry_reason))
        return envelope

    def ping(self, payload: bytes = b"") -> int:
        """Ping the newest open connection (Slack's servers do); returns its id. The pong
        shows up in `connections()[...].pongs`."""
        with self._lock:
            link = next((self._links[c.id] for c in reversed(self._connections)
                         if c.open and c.id in self._links), None)
        if link is None:
            raise ConnectionError("no app is connected over Socket Mode")
        link.send(OP_PING, payload)
        return link.record.id

    def disconnect(self, reason: str = "refresh_requested") -> None:
        """Tell every connected app to reconnect, as Slack does before it closes a
        connection (`{"type": "disconnect"}`)."""
        with self._lock:
            links = list(self._links.values())
        for link in links:
            with contextlib.suppress(OSError):
                link.send_text({"type": "disconnect", "reason": reason,
                                "debug_info": {"host": "fake-slack"}})

    def close_all(self, code: int = CLOSE_GOING_AWAY) -> None:
        """Close every connection (the fake is stopping): a close frame, then the socket."""
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link.close(code, "fake slack stopping")
            with contextlib.suppress(OSError):
                link.sock.shutdown(socket.SHUT_RDWR)


def _copy_connection(record: SocketConnection) -> SocketConnection:
    return SocketConnection(
        id=record.id, ticket=record.ticket, headers=dict(record.headers),
        opened_at=record.opened_at, closed_at=record.closed_at, close_code=record.close_code,
        pings=record.pings, pongs=list(record.pongs), other_messages=list(record.other_messages),
    )

