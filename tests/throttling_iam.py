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

Paging (`page_size`, or `set_page_size`): IAM pages its list answers (100 items unless
`MaxItems` says otherwise, `IsTruncated` + `Marker` for the next page), but moto answers
several of them whole whatever `MaxItems` says, so the multi-page path of a caller never
runs against it. With a page size set, the proxy hands out IAM list answers in pages of at
most that many items (fewer if the request's `MaxItems` is smaller):

- where moto honours `MaxItems`/`Marker` itself (MOTO_PAGED: ListRoles, ListPolicies,
  ListAttached{Role,User,Group}Policies, ListRoleTags), the proxy only lowers the request's
  `MaxItems` to the page size and moto does the paging;
- where it does not (PROXY_PAGED: GetAccountAuthorizationDetails, List{Role,User,Group}-
  Policies, ListUsers, ListGroups, ListGroupsForUser, GetGroup, ListPolicyVersions,
  ListUserTags), the proxy forwards the request without `MaxItems`/`Marker`, takes moto's
  whole answer and returns one page of it, with `IsTruncated` and an opaque `Marker` (the
  offset of the next item). GetAccountAuthorizationDetails' users, groups, roles and
  policies count together towards a page, as in IAM. Each page is cut from a fresh full
  answer, so an entity created or deleted between pages shifts the rest by one. A Marker
  the proxy did not hand out is refused with IAM's ValidationError.

moto's own paging differs from IAM's in one way: when the last page is exactly full it
still says IsTruncated, and one more (empty) page follows.

Both lists were checked against moto 5.2.5 (tests/integration/test_paginated_iam.py keeps
checking that moto still answers PROXY_PAGED whole and MOTO_PAGED in pages).

`counts` has, per IAM action, requests seen / forwarded / throttled (every page is a
request); `log` every request in order (action, the names it was about, its Marker,
whether it was throttled), for tests that assert call counts and order. Used by tests/
and by bench/ (which puts tests/ on sys.path); it is a test tool, so it lives here and not
in the bot package.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from bot.sandbox.local_http import LocalHttpServer

THROTTLE_BODY = (
    '<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
    "<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
    "<RequestId>{request_id}</RequestId></ErrorResponse>"
)
INVALID_MARKER_BODY = (
    '<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
    "<Error><Type>Sender</Type><Code>ValidationError</Code>"
    "<Message>Invalid Marker: {marker}</Message></Error>"
    "<RequestId>{request_id}</RequestId></ErrorResponse>"
)
IAM_NAMESPACE = "https://iam.amazonaws.com/doc/2010-05-08/"
# IAM list calls moto (5.2.5) answers whole whatever MaxItems says: the proxy cuts the pages.
# Value: the result's list elements, which count together towards a page, in this order.
PROXY_PAGED: dict[str, tuple[str, ...]] = {
    "GetAccountAuthorizationDetails": ("UserDetailList", "GroupDetailList", "RoleDetailList",
                                       "Policies"),
    "ListRolePolicies": ("PolicyNames",),
    "ListUserPolicies": ("PolicyNames",),
    "ListGroupPolicies": ("PolicyNames",),
    "ListUsers": ("Users",),
    "ListGroups": ("Groups",),
    "ListGroupsForUser": ("Groups",),
    "GetGroup": ("Users",),
    "ListPolicyVersions": ("Versions",),
    "ListUserTags": ("Tags",),
}
# IAM list calls moto pages itself by MaxItems/Marker: the proxy only lowers MaxItems.
MOTO_PAGED = frozenset({"ListRoles", "ListPolicies", "ListAttachedRolePolicies",
                        "ListAttachedUserPolicies", "ListAttachedGroupPolicies",
                        "ListRoleTags"})
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
        page_size: int | None = None,
    ) -> None:
        split = urlsplit(upstream_url)
        if split.hostname is None or split.port is None:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        self._upstream = (split.hostname, split.port)
        self._services = frozenset(throttled_services)
        self._lock = threading.Lock()
        self._bucket: TokenBucket | None = None
        self.set_rate(rate, burst)
        self._page_size: int | None = None
        self._paged_actions: frozenset[str] = frozenset()
        self.set_page_size(page_size)
        # Requests for which this returns True are throttled whatever the rate: IAM's
        # budget used up at exactly the moments a test wants.
        self.always_throttle: Callable[[str, dict[str, str]], bool] = lambda _a, _p: False
        self.log: list[ProxyRecord] = []
        self.counts = ActionCounts(Counter(), Counter(), Counter())
        self._local = threading.local()
        self._http = LocalHttpServer(self._handle, name="throttling-iam")

    # -- control ----------------------------------------------------------------------

    def set_rate(self, rate: float | None, burst: float | None = None) -> None:
        """Throttle beyond `rate` requests a second (None: never throttle; 0: throttle
        every request); `burst` defaults to a quarter of a second's worth, at least one."""
        if burst is None:
            burst = 0.0 if rate == 0 else max(1.0, (rate or 0) / 4)
        with self._lock:
            self._bucket = None if rate is None else TokenBucket(rate, burst)

    def set_page_size(self, size: int | None, actions: Iterable[str] | None = None) -> None:
        """Answer IAM list calls in pages of at most `size` items (None: as moto answers
        them), for `actions` (default: every list call in PROXY_PAGED and MOTO_PAGED)."""
        chosen = frozenset(PROXY_PAGED) | MOTO_PAGED if actions is None else frozenset(actions)
        unknown = chosen - set(PROXY_PAGED) - MOTO_PAGED
        if unknown:
            raise ValueError(f"cannot page {sorted(unknown)}: not an IAM list call known here")
        if size is not None and size < 1:
            raise ValueError(f"page size must be at least 1, got {size}")
        with self._lock:
            self._page_size, self._paged_actions = size, chosen

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
        return self._http.url

    def start(self) -> ThrottlingIamProxy:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

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
        with self._lock:
            page_size = self._page_size if action in self._paged_actions else None
        if page_size is not None and service == "iam" and body:
            status, headers, payload = self._forward_paged(handler, body, action, page_size)
        else:
            status, headers, payload = self._forward(handler, body)
        handler.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                    "server", "date"):
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _forward_paged(self, handler: BaseHTTPRequestHandler, body: bytes, action: str,
                       page_size: int) -> tuple[int, list[tuple[str, str]], bytes]:
        """One page of at most `page_size` items of the list call in `body`."""
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
        params = dict(pairs)
        try:
            asked = int(params.get("MaxItems") or page_size)
        except ValueError:
            asked = page_size  # not a number: let IAM's own validation be moto's
        limit = max(1, min(asked, page_size))
        kept = [(k, v) for k, v in pairs if k not in ("MaxItems", "Marker")]
        if action in MOTO_PAGED:
            marker = [("Marker", params["Marker"])] if "Marker" in params else []
            return self._forward(handler, urlencode([*kept, ("MaxItems", str(limit)), *marker])
                                 .encode())
        start = _offset_of(params.get("Marker"))
        if start is None:
            return _error(INVALID_MARKER_BODY.format(marker=params.get("Marker"),
                                                     request_id=uuid.uuid4()))
        status, headers, payload = self._forward(handler, urlencode(kept).encode())
        if status != 200:
            return status, headers, payload
        return status, headers, _page_of(payload, PROXY_PAGED[action], start, limit)

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        # Content-Length is http.client's to set: the body may have been rewritten.
        headers = {k: v for k, v in handler.headers.items()
                   if k.lower() not in ("connection", "keep-alive", "content-length")}
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


def _error(payload: str) -> tuple[int, list[tuple[str, str]], bytes]:
    return (400, [("Content-Type", "text/xml"), ("x-amzn-RequestId", str(uuid.uuid4()))],
            payload.encode())


def _marker_for(offset: int) -> str:
    return base64.urlsafe_b64encode(f"proxy-page:{offset}".encode()).decode()


def _offset_of(marker: str | None) -> int | None:
    """The offset a Marker of ours stands for (0 without one; None: not one of ours)."""
    if marker is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(marker.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    prefix, _, number = text.partition(":")
    return int(number) if prefix == "proxy-page" and number.isdigit() else None


def _page_of(payload: bytes, lists: tuple[str, ...], start: int, limit: int) -> bytes:
    """moto's whole answer cut to items [start, start + limit) of `lists` (taken together,
    in that order), with IsTruncated and, when more follow, Marker set as IAM does."""
    ns = f"{{{IAM_NAMESPACE}}}"
    root = ET.fromstring(payload)
    result = next(iter(root))  # <XxxResult>, before <ResponseMetadata>
    items: list[tuple[ET.Element, ET.Element]] = []
    for name in lists:
        container = result.find(ns + name)
        if container is not None:
            items.extend((container, member) for member in list(container))
            for member in list(container):
                container.remove(member)
    for container, member in items[start:start + limit]:
        container.append(member)
    truncated = start + limit < len(items)
    for name in ("IsTruncated", "Marker"):
        for old in result.findall(ns + name):
            result.remove(old)
    ET.SubElement(result, ns + "IsTruncated").text = "true" if truncated else "false"
    if truncated:
        ET.SubElement(result, ns + "Marker").text = _marker_for(start + limit)
    page: bytes = ET.tostring(root, encoding="utf-8", default_namespace=IAM_NAMESPACE)
    return page
