"""/slack/events never answers 5xx, whatever arrives: a seeded generator sends 2,400
hostile requests (malformed bodies, content types, payload JSON, headers; signed and
unsigned) to the app as the web process serves it (bot.slack.wsgi's composition over
HTTP), and checks every status, that the app keeps answering a real command, and that
each refusal costs one short log line and no traceback.

The figures (cases sent, statuses seen) are printed; run with -s to see them."""

from __future__ import annotations

import http.client
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

import pytest
from slack_flows_harness import ALICE, SIGNING_SECRET, Flows

from bot.sandbox.slack_client import sign

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)

SEED = 20261201
CASES = 2400
FORM = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Case:
    body: bytes
    headers: dict[str, str]
    signed: bool  # carries a valid signature and a current timestamp


def _json_values(rng: random.Random, depth: int = 0) -> object:
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.randint(-2**40, 2**40)
    if choice == 3:
        return rng.random() * 1e6
    if choice == 4:
        return rng.choice(["", "x", "\u0000", "<!channel>", "é" * 50, "approve_request", "1"])
    if choice == 5:
        return "A" * rng.choice([1, 100, 5000])
    if choice == 6:
        return [_json_values(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["type", "user", "team", "actions", "view", "event", "id", "value",
                        "action_id", "callback_id", "trigger_id", "channel", "x"]):
            _json_values(rng, depth + 1) for _ in range(rng.randrange(5))}


PAYLOAD_TYPES = ["block_actions", "view_submission", "view_closed", "shortcut",
                 "message_action", "block_suggestion", "interactive_message",
                 "event_callback", "url_verification", "app_rate_limited", "nonsense", ""]


def _payload(rng: random.Random) -> object:
    """Something shaped like a Slack payload, with wrong types in random places."""
    shape: dict[str, object] = {"type": rng.choice(PAYLOAD_TYPES)}
    for key in ("user", "team", "actions", "view", "event", "container", "channel",
                "enterprise", "api_app_id", "trigger_id", "response_url", "challenge",
                "is_enterprise_install", "authorizations"):
        if rng.random() < 0.4:
            shape[key] = _json_values(rng)
    if rng.random() < 0.3:
        shape["actions"] = [{"action_id": rng.choice(["approve_request", "deny_request",
                                                      "end_grant", "request_entry", "zz"]),
                             "value": _json_values(rng)}]
    if rng.random() < 0.2:
        shape["user"] = {"id": _json_values(rng)}
    if rng.random() < 0.1:
        return _json_values(rng)  # not an object at all
    return shape


def _body(rng: random.Random) -> tuple[bytes, str | None]:
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300)), rng.choice([FORM, JSON_TYPE, None])
    if kind == 1:
        fixed = [b"payload=%7B", b"payload=null", b"[]", b"payload=", b"payload=%5B%5D",
                 b"payload=1", b'payload="x"', b"{", b"{}", b"null", b"\xff\xfe",
                 b"payload=%ff%fe", b"a=b&&&==", b"payload=%7B%22type%22%3A%5B%5D%7D"]
        return rng.choice(fixed), rng.choice([FORM, JSON_TYPE, "text/plain", None])
    if kind in (2, 3, 4):
        payload = json.dumps(_payload(rng))
        if rng.random() < 0.15:
            payload = payload[: rng.randrange(len(payload) + 1)]  # cut short
        return ("payload=" + quote(payload)).encode(), rng.choice([FORM, FORM, None])
    if kind in (5, 6):
        return json.dumps(_payload(rng)).encode(), rng.choice([JSON_TYPE, JSON_TYPE, FORM])
    if kind == 7:
        form = {"command": rng.choice(["/connect-access", "", "/other", "x" * 300]),
                "text": rng.choice(["help", "", "<!channel>", "status", "list", "é" * 10]),
                "user_id": rng.choice([ALICE, "", "not-a-user"]),
                "response_url": rng.choice(["", "http://127.0.0.1:9/r", "notaurl"]),
                "trigger_id": rng.choice(["", "1.2.3"])}
        for key in list(form):
            if rng.random() < 0.3:
                del form[key]
        return urlencode(form).encode(), rng.choice([FORM, FORM, JSON_TYPE])
    if kind == 8:
        depth = rng.choice([10, 100, 5000])
        return ("[" * depth + "]" * depth).encode(), JSON_TYPE
    if kind == 9:
        return b"", rng.choice([FORM, JSON_TYPE, None])
    if kind == 10:
        return b"--b\r\nContent-Disposition: form-data; name=payload\r\n\r\n{}\r\n--b--", \
            "multipart/form-data; boundary=b"
    return ("ssl_check=1&token=" + rng.choice(["x", ""])).encode(), FORM


def _headers(rng: random.Random, body: bytes, content_type: str | None
             ) -> tuple[dict[str, str], bool]:
    now = int(time.time())
    headers: dict[str, str] = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if rng.random() < 0.2:
        headers["X-Slack-Retry-Num"] = rng.choice(["1", "x", "-1", "99999999999999999"])
        headers["X-Slack-Retry-Reason"] = rng.choice(["http_timeout", "", "<>"])
    mode = rng.randrange(10)
    if mode < 4:  # signed, current
        stamp = str(now)
        headers["X-Slack-Request-Timestamp"] = stamp
        headers["X-Slack-Signature"] = sign(SIGNING_SECRET, stamp, body)
        return headers, True
    if mode == 4:  # unsigned
        return headers, False
    if mode == 5:  # a timestamp that is not a number (signed over it anyway)
        stamp = rng.choice(["abc", "", "1e9", " 123", "-5", "\uff11\uff12\uff13", "123.5", "0x10"])
        headers["X-Slack-Request-Timestamp"] = stamp
        headers["X-Slack-Signature"] = "v0=" + sign(SIGNING_SECRET, stamp, body)[3:]
        return headers, False
    if mode == 6:  # stale or from the future, correctly signed
        # Well past the 5 minutes, so the time the case waits to be sent cannot matter.
        stamp = str(now + rng.choice([-1, 1]) * rng.choice([301 + 300, 3600, 10**9]))
        headers["X-Slack-Request-Timestamp"] = stamp
        headers["X-Slack-Signature"] = sign(SIGNING_SECRET, stamp, body)
        return headers, False
    stamp = str(now)
    headers["X-Slack-Request-Timestamp"] = stamp
    headers["X-Slack-Signature"] = rng.choice([
        sign("wrong-secret", stamp, body), "", "v0=", "v1=" + "0" * 64, "v0=zz",
        sign(SIGNING_SECRET, stamp, body + b"x"), "é" * 10])
    return headers, False


def generate(seed: int, count: int) -> Iterator[Case]:
    rng = random.Random(seed)
    for _ in range(count):
        body, content_type = _body(rng)
        headers, signed = _headers(rng, body, content_type)
        yield Case(body, headers, signed)


def post(url: str, case: Case) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        connection.putrequest("POST", parts.path)
        for name, value in case.headers.items():
            connection.putheader(name, value.encode("utf-8"))
        connection.putheader("Content-Length", str(len(case.body)))
        connection.endheaders(case.body)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def alive(flows: Flows) -> bool:
    return flows.client.command(ALICE, "help").status == 200


def test_hostile_requests_never_get_a_5xx_and_the_app_keeps_answering(
        flows: Flows, caplog: pytest.LogCaptureFixture) -> None:
    url = flows.client.app_url
    statuses: Counter[int] = Counter()
    by_kind: dict[bool, Counter[int]] = {True: Counter(), False: Counter()}
    failures: list[tuple[int, Case]] = []
    with caplog.at_level(logging.WARNING):
        for number, case in enumerate(generate(SEED, CASES), start=1):
            status = post(url, case)
            statuses[status] += 1
            by_kind[case.signed][status] += 1
            if status >= 500 or (not case.signed and status != 401):
                failures.append((status, case))
            if number % 400 == 0:
                assert alive(flows), f"the app stopped answering after {number} cases"
    assert alive(flows)
    print(f"\nfuzz: {CASES} cases, statuses {dict(sorted(statuses.items()))}; "
          f"signed {dict(sorted(by_kind[True].items()))}, "
          f"unsigned or badly signed {dict(sorted(by_kind[False].items()))}")
    assert not failures, failures[:5]
    assert sum(by_kind[False].values()) >= 1000 and sum(by_kind[True].values()) >= 800

    # Every refusal wrote one short line, and no request left a traceback behind.
    refusals = [r for r in caplog.records if r.name == "bot.slack.guard"]
    assert len(refusals) == by_kind[False][401] + sum(
        n for s, n in by_kind[True].items() if s in (400, 413))
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in refusals)
    assert all(len(r.getMessage()) < 300 for r in refusals)
    tracebacks = [r for r in caplog.records if r.exc_info is not None
                  and r.name.startswith(("bot.slack.guard", "slack_bolt"))]
    assert tracebacks == []


def test_a_non_numeric_timestamp_is_refused_before_the_body_is_read(flows: Flows) -> None:
    for stamp in ("abc", "12a", "\uff11\uff12\uff13"):
        body = b"payload=%7B"
        case = Case(body, {"Content-Type": FORM, "X-Slack-Request-Timestamp": stamp,
                           "X-Slack-Signature": "v0=" + "0" * 64}, signed=False)
        assert post(flows.client.app_url, case) == 401
    # The shapes that used to give 500 even unsigned: 401 unsigned, 400 signed.
    for body, content_type in ((b"payload=%7B", FORM), (b"payload=null", FORM),
                               (b"[]", JSON_TYPE), (b"payload=%5B%5D", FORM),
                               (b'payload="x"', FORM)):
        assert post(flows.client.app_url, Case(body, {"Content-Type": content_type},
                                               signed=False)) == 401
        stamp = str(int(time.time()))
        signed = Case(body, {"Content-Type": content_type, "X-Slack-Request-Timestamp": stamp,
                             "X-Slack-Signature": sign(SIGNING_SECRET, stamp, body)},
                      signed=True)
        assert post(flows.client.app_url, signed) == 400, body
