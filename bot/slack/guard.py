"""The /slack/events endpoint's front door: nothing that arrives there gets a 5xx.

Bolt parses the body before it checks the signature, and a body it cannot parse (a
`payload=%7B`, `payload=null`, a JSON `[]`) raised inside it, so anyone who could reach the
endpoint got a 500 and wrote a traceback into the log. A non-numeric
`X-Slack-Request-Timestamp` was even let through. `GuardedRequestHandler` answers such
requests itself, before Bolt sees them:

1. the signature is verified first, on the raw bytes, before anything is parsed: a missing
   or non-numeric timestamp, one older (or newer) than five minutes, a missing or wrong
   `v0=` signature -> 401;
2. a signed body Bolt could not make sense of (not UTF-8, not a JSON object where Bolt
   expects one, a `payload` that is not a JSON object, too large) -> 400;
3. anything Bolt still raises on while dispatching a signed request -> 400;
4. a body that stops short of its Content-Length: 400 when the client closes early, 408
   when it stalls past `body_timeout` seconds (under gunicorn the client socket gets that
   read deadline, so a client announcing more bytes than it sends holds a worker thread
   for seconds, not until it gives up). A client that never finishes its headers is
   gunicorn's to time out; run the web process behind a buffering load balancer.

Each refusal is one short log line (status, reason, client address), never a traceback.
Requests elsewhere (other paths, Bolt's 404) pass through unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.request.internals import parse_body

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

# Slack's own tolerance for request timestamps (and Bolt's).
MAX_CLOCK_SKEW_SECONDS = 300
# Slack's payloads are a few kilobytes; views with many blocks stay well under this.
MAX_BODY_BYTES = 1024 * 1024
# Slack sends a whole payload in one go; 10 s for the rest of a body is generous.
BODY_TIMEOUT_SECONDS = 10.0


class Rejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def signature_for(signing_secret: str, timestamp: bytes, body: bytes) -> str:
    digest = hmac.new(signing_secret.encode(), b"v0:" + timestamp + b":" + body,
                      hashlib.sha256).hexdigest()
    return f"v0={digest}"


class GuardedRequestHandler(SlackRequestHandler):
    """SlackRequestHandler that verifies and checks every POST to its path first."""

    def __init__(self, app: App, *, signing_secret: str, path: str = "/slack/events",
                 now: Callable[[], float] = time.time,
                 max_body_bytes: int = MAX_BODY_BYTES,
                 body_timeout: float = BODY_TIMEOUT_SECONDS) -> None:
        super().__init__(app, path=path)
        if not signing_secret:
            raise ValueError("a signing secret is needed to verify requests")
        if body_timeout <= 0:
            raise ValueError("body_timeout must be positive")
        self._secret = signing_secret
        self._now = now
        self._max_body = max_body_bytes
        self._body_timeout = body_timeout

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        if (environ.get("REQUEST_METHOD") != "POST"
                or environ.get("PATH_INFO", "") != self.path):
            return super().__call__(environ, start_response)
        try:
            self._admit(environ)
            return super().__call__(environ, start_response)
        except Rejected as refusal:
            return self._refuse(environ, start_response, refusal.status, refusal.reason)
        except Exception as exc:  # Bolt choked on a signed request: its shape is ours to refuse
            return self._refuse(environ, start_response, 400,
                                f"could not be handled ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:120]})")

    # -----------------------------------------------------------------------------------

    def _admit(self, environ: WSGIEnvironment) -> None:
        """Verify, then check the shape; put the body back for Bolt to read."""
        body = self._read_body(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        self._verify(environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP"),
                     environ.get("HTTP_X_SLACK_SIGNATURE"), body)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected(400, "body is not UTF-8") from None
        content_type = environ.get("CONTENT_TYPE") or None
        try:
            # Bolt's own parser, so what passes here is exactly what Bolt will build from.
            parsed: Any = parse_body(text, content_type)
        except (ValueError, TypeError):
            raise Rejected(400, "body is not valid JSON or form data") from None
        if not isinstance(parsed, dict):
            raise Rejected(400, f"body is a JSON {type(parsed).__name__}, not an object")

    def _read_body(self, environ: WSGIEnvironment) -> bytes:
        raw_length = environ.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw_length)
        except ValueError:
            raise Rejected(400, "Content-Length is not a number") from None
        if length < 0:
            raise Rejected(400, "Content-Length is negative")
        if length > self._max_body:
            raise Rejected(413, f"body of {length} bytes is over {self._max_body}")
        stream = environ.get("wsgi.input")
        if stream is None or length == 0:
            return b""
        client = environ.get("gunicorn.socket")
        deadline = client.settimeout if isinstance(client, socket.socket) else None
        previous = client.gettimeout() if isinstance(client, socket.socket) else None
        if deadline is not None:
            deadline(self._body_timeout)
        try:
            body: bytes = stream.read(length)
        except TimeoutError:
            self._stop_reading(environ)
            raise Rejected(408, f"body did not arrive within {self._body_timeout:g} s "
                                f"(Content-Length says {length} bytes)") from None
        except OSError as exc:
            self._stop_reading(environ)
            raise Rejected(400, f"body could not be read ({type(exc).__name__})") from None
        finally:
            if deadline is not None:
                # gunicorn's keep-alive handling sets its own blocking mode afterwards;
                # leave the socket as it was handed to us.
                with contextlib.suppress(OSError):
                    deadline(previous)
        if len(body) < length:
            self._stop_reading(environ)
            raise Rejected(400, f"body is {len(body)} bytes, shorter than its "
                                f"Content-Length of {length}")
        return body

    @staticmethod
    def _stop_reading(environ: WSGIEnvironment) -> None:
        """After a body that stopped short, whatever the client sends next is the rest of
        that body, not a new request: stop reading the connection (the answer still goes
        out, and gunicorn then closes it). A WSGI app may not send `Connection: close`."""
        client = environ.get("gunicorn.socket")
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RD)

    def _verify(self, timestamp: str | None, signature: str | None, body: bytes) -> None:
        if not timestamp:
            raise Rejected(401, "no X-Slack-Request-Timestamp")
        if not (timestamp.isascii() and timestamp.isdigit()):
            raise Rejected(401, "X-Slack-Request-Timestamp is not a number")
        if abs(self._now() - int(timestamp)) > MAX_CLOCK_SKEW_SECONDS:
            raise Rejected(401, "X-Slack-Request-Timestamp is more than 5 minutes off")
        if not signature:
            raise Rejected(401, "no X-Slack-Signature")
        expected = signature_for(self._secret, timestamp.encode(), body)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise Rejected(401, "signature does not match")

    @staticmethod
    def _refuse(environ: WSGIEnvironment, start_response: StartResponse, status: int,
                reason: str) -> Iterable[bytes]:
        logger.warning("refused %s %s from %s: %d, %s", environ.get("REQUEST_METHOD"),
                       environ.get("PATH_INFO"), environ.get("REMOTE_ADDR", "?"), status,
                       reason)
        body = json.dumps({"error": "invalid request" if status == 401 else "bad request"})
        phrase = {400: "Bad Request", 401: "Unauthorized", 408: "Request Timeout",
                  413: "Payload Too Large"}[status]
        start_response(f"{status} {phrase}", [("Content-Type", "application/json"),
                                              ("Content-Length", str(len(body)))])
        return [body.encode()]
