"""A rate-limited IAM for tests and benchmarks: an HTTP proxy in front of a moto server
that answers IAM's real `Throttling` error once requests come faster than a configurable
rate, and counts what it saw.

moto never throttles; real IAM does, well below what moto serves. Point boto3 (or the
bot, through AWS_ENDPOINT_URL) at `proxy.url`: IAM requests beyond the token bucket
(`rate` a second, `burst` at once) get what IAM sends then, HTTP 400 with

    <ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>
    <Message>Rate exceeded</Message></Error><RequestId>...</RequestId></ErrorResponse>

so botocore's retry logic, the bot's rate limiter and its error handling all run as they
would against AWS. Everything else is forwarded to moto unchanged. Other services (STS)
pass through unthrottled unless listed in `throttled_services`.

`counts` has, per IAM action, requests seen / forwarded / throttled; `log` every request in
order (action, the names it was about, whether it was throttled), for tests that assert
call counts and order. Used by tests/ and by bench/ (which puts tests/ on sys.path); it is
a test tool, so it lives here and not in the bot package.
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

THROTTLE_BODY = (
    '<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
    "<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
    "<RequestId>{request_id}</RequestId></ErrorResponse>"
)
# Parameters worth keeping in the log: which principal and policy a call was about.
LOGGED_PARAMS = ("RoleName", "UserName", "GroupName", "PolicyName", "PolicyArn", "Marker")


@dataclass(frozen=True)
class ProxyRecord:
    at: float  # time.monotonic() when the request arrived
    service: str
    action: str
    params: dict[str, str]
    throttled: bool


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._at = burst, time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


@dataclass
class ActionCounts:
    requests: Counter[str]
    forwarded: Counter[str]
    throttled: Counter[str]


class ThrottlingIamProxy:
    """Start with `start()` (or as a context manager); `url` is the endpoint for boto3."""

    def __init__(
        self,
        upstream_url: str,
        *,
        rate: float | None = None,
        burst: float | None = None,
        throttled_services: Iterable[str] = ("iam",),
    ) -> None:
        split = urlsplit(upstream_url)
        if split.hostname is None or split.port is None:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        self._upstream = (split.hostname, split.port)
        self._services = frozenset(throttled_services)
        self._lock = threading.Lock()
        self._bucket: TokenBucket | None = None
        self.set_rate(rate, burst)
        # Requests for which this returns True are throttled whatever the rate: IAM's
        # budget used up at exactly the moments a test wants.
        self.always_throttle: Callable[[str, dict[str, str]], bool] = lambda _a, _p: False
        self.log: list[ProxyRecord] = []
        self.counts = ActionCounts(Counter(), Counter(), Counter())
        self._local = threading.local()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ----------------------------------------------------------------------

    def set_rate(self, rate: float | None, burst: float | None = None) -> None:
        """Throttle beyond `rate` requests a second (None: never throttle; 0: throttle
        every request); `burst` defaults to a quarter of a second's worth, at least one."""
        if burst is None:
            burst = 0.0 if rate == 0 else max(1.0, (rate or 0) / 4)
        with self._lock:
            self._bucket = None if rate is None else TokenBucket(rate, burst)

    def reset(self) -> None:
        with self._lock:
            self.log.clear()
            self.counts = ActionCounts(Counter(), Counter(), Counter())

    def records(self, action: str | None = None) -> list[ProxyRecord]:
        with self._lock:
            return [r for r in self.log if action is None or r.action == action]

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.counts.requests.values())

    @property
    def total_throttled(self) -> int:
        with self._lock:
            return sum(self.counts.throttled.values())

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("proxy not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ThrottlingIamProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

            def do_POST(self) -> None:
                proxy._handle(self)

            def do_GET(self) -> None:
                proxy._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="throttling-iam",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ThrottlingIamProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- serving ----------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        service = _service_of(handler.headers.get("Authorization", ""))
        form = parse_qs(body.decode(errors="replace")) if body else {}
        if not form and "?" in handler.path:
            form = parse_qs(handler.path.split("?", 1)[1])
        action = form.get("Action", ["?"])[0]
        params = {k: form[k][0] for k in LOGGED_PARAMS if k in form}
        with self._lock:
            bucket = self._bucket if service in self._services else None
        throttled = service in self._services and self.always_throttle(action, params)
        throttled = throttled or (bucket is not None and not bucket.take())
        record = ProxyRecord(time.monotonic(), service, action, params, throttled)
        with self._lock:
            self.log.append(record)
            self.counts.requests[action] += 1
            (self.counts.throttled if throttled else self.counts.forwarded)[action] += 1
        if throttled:
            payload = THROTTLE_BODY.format(request_id=uuid.uuid4()).encode()
            handler.send_response(400)
            handler.send_header("Content-Type", "text/xml")
            handler.send_header("Content-Length", str(len(payload)))
            handler.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        status, headers, payload = self._forward(handler, body)
        handler.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                    "server", "date"):
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in handler.headers.items()
                   if k.lower() not in ("connection", "keep-alive")}
        for attempt in (1, 2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection(*self._upstream, timeout=120)
                self._local.connection = connection
            try:
                connection.request(handler.command, handler.path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.HTTPException, OSError):
                # moto closed a kept-alive connection: open a fresh one, once.
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _service_of(authorization: str) -> str:
    """The service in a SigV4 credential scope: Credential=AKID/date/region/SERVICE/..."""
    marker = "Credential="
    start = authorization.find(marker)
    if start < 0:
        return ""
    parts = authorization[start + len(marker):].split(",", 1)[0].split("/")
    return parts[3] if len(parts) > 3 else ""
