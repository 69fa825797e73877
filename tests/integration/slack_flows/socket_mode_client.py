"""A SlackClient over Socket Mode, for the tests (the demo drives the app over HTTP only, so
this lives under tests/, not bot/sandbox/): the same commands, clicks, submissions and
events, delivered as envelopes on a SocketModeFakeSlack's WebSocket instead of signed HTTP
posts.

`send` turns what SlackClient would have posted into the envelope Slack sends for it
(a slash command's form fields become the `slash_commands` payload, an interaction's
`payload` field the `interactive` payload, an event callback the `events_api` payload),
pushes it to the connected app and waits for the app's ack. The ack's response payload
comes back as the result's body, as an HTTP answer would, so SlackDriver plays whole
conversations over Socket Mode unchanged:

    driver = SlackDriver(fake, SocketModeSlackClient(fake), timeout=10)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from fake_socket_mode import LINK_PATH, Envelope, SocketModeFakeSlack

from bot.sandbox.slack_client import HttpResult, SlackClient


class SocketModeSlackClient(SlackClient):
    def __init__(self, fake: SocketModeFakeSlack, *, ack_timeout: float = 10.0, **kwargs: Any
                 ) -> None:
        """`ack_timeout`: how long to wait for the app's ack of each envelope (Slack
        gives an app 3 seconds before it retries)."""
        super().__init__(f"ws://127.0.0.1:{fake.socket_mode.port}{LINK_PATH}", "",
                         response_url_factory=fake.response_url, **kwargs)
        self.fake = fake
        self.ack_timeout = ack_timeout
        self.last_envelope: Envelope | None = None

    def send(
        self,
        body: bytes,
        content_type: str,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResult:
        if timestamp is not None or signature is not None:
            raise ValueError("Socket Mode envelopes are not signed; test signatures over HTTP")
        envelope_type, payload = _envelope_of(body, content_type)
        retry = {k.lower(): v for k, v in (headers or {}).items()}
        started = time.perf_counter()
        envelope = self.fake.socket_mode.send_envelope(
            envelope_type,
            payload,
            retry_attempt=int(retry["x-slack-retry-num"]) if "x-slack-retry-num" in retry
            else None,
            retry_reason=retry.get("x-slack-retry-reason"),
        )
        self.last_envelope = envelope
        ack = self.fake.socket_mode.wait_for_ack(envelope.envelope_id, self.ack_timeout)
        answer = json.dumps(ack.payload) if ack.payload is not None else ""
        return HttpResult(200, answer, time.perf_counter() - started)


def _envelope_of(body: bytes, content_type: str) -> tuple[str, dict[str, Any]]:
    if content_type.startswith("application/json"):
        return "events_api", dict(json.loads(body))
    form = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    if set(form) == {"payload"}:
        return "interactive", dict(json.loads(form["payload"]))
    return "slash_commands", dict(form)
