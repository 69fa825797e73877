"""Send requests to the bot exactly as Slack does: signed with the app's signing secret.

Slack signs `v0:{timestamp}:{raw body}` with HMAC-SHA256 and sends the hex digest as
`X-Slack-Signature: v0=...` with `X-Slack-Request-Timestamp`. Slash commands are
form-encoded, interactivity is a form field `payload` holding JSON, events are JSON.
Timestamps and signatures can be overridden to test the app's verification.

Buttons are clicked on what the app really showed (a message, a response_url post, a
view): `click` finds the button in the blocks, so a test cannot press a button the app
never rendered. `AppServer` serves a WSGI app on 127.0.0.1 in a thread; `SlackDriver`
plays whole conversations against the app and a FakeSlack.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import WSGIApplication

from bot.sandbox.fake_slack import FakeSlack, Message, ResponsePost

DEFAULT_PATH = "/slack/events"


def sign(signing_secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class HttpResult:
    status: int
    body: str
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class ButtonNotFound(AssertionError):
    """The blocks have no such button: the app never offered it."""


class SlackClient:
    def __init__(
        self,
        app_url: str,
        signing_secret: str,
        *,
        response_url_factory: Any = None,
        team_id: str = "T0FAKE",
        api_app_id: str = "A0CONNECT",
        timeout: float = 10.0,
    ) -> None:
        """`app_url` is the app's endpoint (…/slack/events); `response_url_factory` makes
        a fresh response_url per request (FakeSlack.response_url)."""
        self.app_url = app_url
        self.signing_secret = signing_secret
        self.team_id = team_id
        self.api_app_id = api_app_id
        self.timeout = timeout
        self._response_url = response_url_factory or (lambda: "http://127.0.0.1:9/response")
        self._counter = itertools.count(1)

    # -- raw ----------------------------------------------------------------------------

    def send(
        self,
        body: bytes,
        content_type: str,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResult:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        request = urllib.request.Request(
            self.app_url,
            data=body,
            method="POST",
            headers={
                "Content-Type": content_type,
                "X-Slack-Request-Timestamp": stamp,
                "X-Slack-Signature": signature or sign(self.signing_secret, stamp, body),
                **(headers or {}),
            },
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            status = error.code
        return HttpResult(status, text, time.perf_counter() - started)

    def _trigger_id(self, user_id: str) -> str:
        return f"{int(time.time())}{next(self._counter):06d}.{user_id}"

    # -- slash commands -----------------------------------------------------------------

    def command(
        self,
        user_id: str,
        text: str,
        *,
        command: str = "/connect-access",
        channel_id: str = "C0GENERAL",
        response_url: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> HttpResult:
        form = {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "team_domain": "fake",
            "channel_id": channel_id,
            "channel_name": "general",
            "user_id": user_id,
            "user_name": user_id.lower(),
            "command": command,
            "text": text,
            "api_app_id": self.api_app_id,
            "response_url": response_url or self._response_url(),
            "trigger_id": self._trigger_id(user_id),
        }
        body = urlencode(form).encode()
        return self.send(
            body, "application/x-www-form-urlencoded", timestamp=timestamp, signature=signature
        )

    # -- interactivity ------------------------------------------------------------------

    def interaction(self, payload: Mapping[str, Any], **overrides: Any) -> HttpResult:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return self.send(body, "application/x-www-form-urlencoded", **overrides)

    def _user(self, user_id: str) -> dict[str, Any]:
        return {
            "id": user_id,
            "username": user_id.lower(),
            "name": user_id.lower(),
            "team_id": self.team_id,
        }

    def click(
        self,
        user_id: str,
        action_id: str,
        *,
        blocks: list[dict[str, Any]],
        value: str | None = None,
        channel_id: str | None = None,
        message_ts: str | None = None,
        view: Mapping[str, Any] | None = None,
        ephemeral: bool = False,
        response_url: str | None = None,
    ) -> HttpResult:
        """Press the button `action_id` (with `value`, if several) in `blocks`: in a channel
        message (channel_id + message_ts), an ephemeral response, or a view."""
        block_id, button = find_button(blocks, action_id, value)
        action = {
            "type": "button",
            "action_id": action_id,
            "block_id": block_id,
            "text": button["text"],
            "value": button.get("value", ""),
            "action_ts": f"{time.time():.6f}",
        }
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": self._user(user_id),
            "api_app_id": self.api_app_id,
            "token": "legacy-verification-token",
            "team": {"id": self.team_id, "domain": "fake"},
            "trigger_id": self._trigger_id(user_id),
            "actions": [action],
        }
        if view is not None:
            payload["container"] = {"type": "view", "view_id": view.get("id", "")}
            payload["view"] = dict(view)
        else:
            payload["container"] = {
                "type": "message",
                "message_ts": message_ts or "",
                "channel_id": channel_id or "",
                "is_ephemeral": ephemeral,
            }
            payload["channel"] = {"id": channel_id or "", "name": "channel"}
            payload["message"] = {"type": "message", "ts": message_ts or "", "blocks": blocks}
            payload["response_url"] = response_url or self._response_url()
        return self.interaction(payload)

    def submit_view(
        self,
        user_id: str,
        view: Mapping[str, Any],
        values: Mapping[str, str],
        *,
        view_id: str | None = None,
    ) -> HttpResult:
        """Submit a modal as it was opened, with `values` per input block id (the option
        value for selects, the text for text inputs)."""
        state: dict[str, dict[str, Any]] = {}
        for block in view.get("blocks", []):
            if block.get("type") != "input" or block.get("block_id") not in values:
                continue
            element = block["element"]
            given = values[block["block_id"]]
            if element["type"] in ("static_select", "radio_buttons"):
                options = {o["value"]: o for o in element.get("options", [])}
                option = options.get(
                    given, {"text": {"type": "plain_text", "text": given}, "value": given}
                )
                entry: dict[str, Any] = {"type": element["type"], "selected_option": option}
            else:
                entry = {"type": element["type"], "value": given}
            state[block["block_id"]] = {element["action_id"]: entry}
        payload = {
            "type": "view_submission",
            "user": self._user(user_id),
            "api_app_id": self.api_app_id,
            "token": "legacy-verification-token",
            "team": {"id": self.team_id, "domain": "fake"},
            "trigger_id": self._trigger_id(user_id),
            "view": {
                **view,
                "id": view_id or view.get("id", "V0000"),
                "team_id": self.team_id,
                "state": {"values": state},
                "hash": f"{time.time():.6f}.hash",
            },
            "response_urls": [],
        }
        return self.interaction(payload)

    # -- events -------------------------------------------------------------------------

    def event(
        self,
        event: Mapping[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> HttpResult:
        envelope = {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "api_app_id": self.api_app_id,
            "event": dict(event),
            "type": "event_callback",
            "event_id": event_id or f"Ev{int(time.time())}{next(self._counter):06d}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": self.team_id, "user_id": "U0CABOT", "is_bot": True}],
        }
        headers = {}
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
        return self.send(
            json.dumps(envelope).encode(),
            "application/json",
            timestamp=timestamp,
            signature=signature,
            headers=headers,
        )

    def open_home(self, user_id: str, **kwargs: Any) -> HttpResult:
        return self.event(
            {
                "type": "app_home_opened",
                "user": user_id,
                "channel": "D" + user_id[1:],
                "tab": "home",
                "event_ts": f"{time.time():.6f}",
            },
            **kwargs,
        )


def iter_buttons(blocks: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for block in blocks:
        candidates = list(block.get("elements", []))
        if block.get("accessory"):
            candidates.append(block["accessory"])
        for element in candidates:
            if isinstance(element, dict) and element.get("type") == "button":
                yield str(block.get("block_id", "")), element


def find_button(
    blocks: list[dict[str, Any]], action_id: str, value: str | None = None
) -> tuple[str, dict[str, Any]]:
    for block_id, button in iter_buttons(blocks):
        if button.get("action_id") == action_id and (value is None or button.get("value") == value):
            return block_id, button
    shown = [f"{b.get('action_id')}={b.get('value')}" for _, b in iter_buttons(blocks)]
    raise ButtonNotFound(f"no button {action_id}={value} among {shown}")


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # socketserver's default backlog of 5 resets connections when 20 clicks arrive at
    # once on a busy machine; Slack's own bursts are larger than that.
    request_queue_size = 128


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


class AppServer:
    """A WSGI app on 127.0.0.1 (ephemeral port), one thread per request."""

    def __init__(self, app: WSGIApplication, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = make_server(
            host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="slack-app",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{DEFAULT_PATH}"

    def start(self) -> AppServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ResponsePost.token of an answer that came in the command's ack, not via response_url.
ACK_ANSWER = "ack"


class SlackDriver:
    """Plays people in Slack against the app and the fake: type a command, press what the
    app showed, fill a modal, and wait (polling the fake's records) for what follows.
    Shared by the integration tests and the demo."""

    def __init__(self, fake: FakeSlack, client: SlackClient, timeout: float = 5.0) -> None:
        self.fake = fake
        self.client = client
        self.timeout = timeout

    # -- slash commands -----------------------------------------------------------------

    def command(self, user: str, text: str) -> ResponsePost:
        """Run the command; returns what the user sees: the answer in the ack (catalog
        lookups) or, after an empty ack, what the app posted to its response_url."""
        url = self.fake.response_url()
        result = self.client.command(user, text, response_url=url)
        if result.status != 200:
            raise AssertionError(f"command answered {result.status}: {result.body}")
        answer = result.json()
        if answer:
            return ResponsePost(token=ACK_ANSWER, body=answer, at=time.time())
        return self.response_to(url)

    def response_to(self, url: str) -> ResponsePost:
        token = url.rsplit("/", 1)[-1]
        found: list[ResponsePost] = self.fake.wait_for(
            lambda f: [r for r in f.responses() if r.token == token],
            self.timeout,
            f"a post to {url}",
        )
        return found[-1]

    # -- buttons ------------------------------------------------------------------------

    def click_response(
        self, user: str, post: ResponsePost, action_id: str, value: str | None = None
    ) -> str:
        """Press a button in an ephemeral answer; returns the response_url the app may
        answer on (see `response_to`)."""
        url = self.fake.response_url()
        result = self.client.click(
            user,
            action_id,
            blocks=post.body["blocks"],
            value=value,
            channel_id="C0GENERAL",
            ephemeral=True,
            response_url=url,
        )
        if result.status != 200:
            raise AssertionError(f"click answered {result.status}: {result.body}")
        return url

    def click_message(
        self, user: str, message: Message, action_id: str, value: str | None = None
    ) -> HttpResult:
        """Press a button on a channel or DM message as it reads now."""
        current = self.fake.message(message.channel, message.ts)
        result = self.client.click(
            user,
            action_id,
            blocks=current.blocks,
            value=value,
            channel_id=current.channel,
            message_ts=current.ts,
        )
        if result.status != 200:
            raise AssertionError(f"click answered {result.status}: {result.body}")
        return result

    # -- modals -------------------------------------------------------------------------

    def wait_for_opened_view(self, count: int) -> dict[str, Any]:
        """The view opened by the `count`-th views.open call, as Slack returned it."""
        call = self.fake.wait_for_calls("views.open", count, self.timeout)[count - 1]
        if not call.response.get("ok"):
            raise AssertionError(f"views.open failed: {call.response}")
        view: dict[str, Any] = call.response["view"]
        return view

    def open_request_modal(self, user: str, text: str) -> tuple[ResponsePost, dict[str, Any]]:
        """Type the command and press Request; returns the preview and the modal."""
        preview = self.command(user, text)
        before = len(self.fake.calls("views.open"))
        self.click_response(user, preview, "request_entry")
        return preview, self.wait_for_opened_view(before + 1)

    def submit(self, user: str, view: dict[str, Any], values: Mapping[str, str]) -> HttpResult:
        result = self.client.submit_view(user, view, values)
        if result.status != 200:
            raise AssertionError(f"submission answered {result.status}: {result.body}")
        return result

    def request(
        self, user: str, text: str, *, instance: str, seconds: int, reason: str
    ) -> tuple[dict[str, Any], Message]:
        """Request access through the modal. Returns the modal as it reads after submitting
        and the approval message posted for it."""
        _, view = self.open_request_modal(user, text)
        before = len(self.fake.calls("chat.postMessage"))
        result = self.submit(
            user, view, {"instance": instance, "duration": str(seconds), "reason": reason}
        )
        answer = result.json() or {}
        if answer.get("response_action") != "update":
            raise AssertionError(f"the modal refused the request: {answer}")
        update = self.fake.wait_for(
            lambda f: [c for c in f.calls("views.update") if c.params.get("view_id") == view["id"]],
            self.timeout,
            "the modal to show the outcome",
        )[-1]
        # The first message to a channel (not a DM) after the submission is the approval.
        call = self.fake.wait_for(
            lambda f: [
                c
                for c in f.calls("chat.postMessage")[before:]
                if c.response.get("ok") and not str(c.response["channel"]).startswith("D")
            ],
            self.timeout,
            "the approval message",
        )[0]
        message = self.fake.message(call.response["channel"], call.response["ts"])
        return dict(update.params["view"]), message

    # -- waiting ------------------------------------------------------------------------

    def wait_for_edit(self, message: Message, edits: int) -> Message:
        found: Message = self.fake.wait_for(
            lambda f: (m := f.message(message.channel, message.ts)).edits >= edits and m,
            self.timeout,
            f"message {message.ts} edited {edits} time(s)",
        )
        return found

    def wait_for_dm(self, user: str, containing: str, count: int = 1) -> Message:
        """The `count`-th DM to `user` whose text contains `containing`."""
        found: list[Message] = self.fake.wait_for(
            lambda f: len(ms := [m for m in f.dms(user) if containing in m.text]) >= count and ms,
            self.timeout,
            f"DM #{count} to {user} containing {containing!r}",
        )
        return found[count - 1]

    def wait_for_ephemeral(self, user: str, containing: str) -> str:
        found: list[str] = self.fake.wait_for(
            lambda f: [e.text for e in f.ephemerals(user) if containing in e.text],
            self.timeout,
            f"an ephemeral message to {user} containing {containing!r}",
        )
        return found[-1]
