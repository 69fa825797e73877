"""A fake Slack Web API over real HTTP on 127.0.0.1, for tests and the demo.

It answers the methods the bot uses the way Slack does (same envelope, same error codes
for the cases we care about), records every call, keeps the channel messages as they now
read (after chat.update), the ephemeral messages, the views and what apps posted to
response_urls. It can be told to answer 429 with Retry-After for a method. It serves
conversations.history (paged, top-level messages, needing channels:history) and lets a
test post as a person (`post_as`) or delete a message as a workspace admin would.

It knows the app-level token (xapp-...) only to refuse it where the bot token belongs and
the other way round; the tests' SocketModeFakeSlack (tests/integration/slack_flows) adds
`apps.connections.open` and the WebSocket, which the demo never uses.

    with FakeSlack(usergroups={"S0LEADS": ["U0BOB"]}) as slack:
        client = WebClient(token=slack.bot_token, base_url=slack.api_url)
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bot.sandbox.local_http import LocalHttpServer
from bot.sandbox.polling import wait_until
from bot.slack.scopes import REQUIRED_BOT_SCOPES

DEFAULT_BOT_TOKEN = "xoxb-fake-bot-token"
DEFAULT_APP_TOKEN = "xapp-1-A0CONNECT-fake-app-token"
# Methods Slack accepts only with the app-level token (xapp-...), never the bot token.
APP_TOKEN_METHODS = frozenset({"apps.connections.open"})
JSON_FIELDS = ("blocks", "attachments", "view", "metadata")


class FakeSlackTimeout(AssertionError):
    """What a test waited for did not show up in the fake's records in time."""


@dataclass(frozen=True)
class RecordedCall:
    method: str
    params: dict[str, Any]
    at: float
    status: int
    response: dict[str, Any]


@dataclass
class Message:
    """A channel (or DM) message as the channel shows it now."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    edits: int = 0
    user: str | None = None  # who posted it; None: the bot


@dataclass(frozen=True)
class Ephemeral:
    channel: str
    user: str
    text: str
    blocks: list[dict[str, Any]]


@dataclass(frozen=True)
class ResponsePost:
    """What an app posted to a response_url (Bolt's respond())."""

    token: str
    body: dict[str, Any]
    at: float


@dataclass
class FakeView:
    id: str
    user: str
    view: dict[str, Any]
    opened_with: str  # views.open / views.push / views.publish


@dataclass
class _State:
    calls: list[RecordedCall] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    ephemerals: list[Ephemeral] = field(default_factory=list)
    responses: list[ResponsePost] = field(default_factory=list)
    views: dict[str, FakeView] = field(default_factory=dict)
    homes: dict[str, FakeView] = field(default_factory=dict)
    rate_limits: dict[str, list[int]] = field(default_factory=dict)


class SlackError(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class FakeSlack:
    def __init__(
        self,
        *,
        bot_token: str = DEFAULT_BOT_TOKEN,
        app_token: str = DEFAULT_APP_TOKEN,
        bot_user_id: str = "U0CABOT",
        team_id: str = "T0FAKE",
        usergroups: Mapping[str, Sequence[str]] | None = None,
        users: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.bot_user_id = bot_user_id
        self.team_id = team_id
        # What Slack reports in X-OAuth-Scopes for the bot token (tests take some away).
        self.bot_scopes: tuple[str, ...] = REQUIRED_BOT_SCOPES
        self._usergroups = {k: list(v) for k, v in (usergroups or {}).items()}
        self._users = dict(users or {})  # id -> real name
        self._http = LocalHttpServer(self._handle, name="fake-slack", host=host, port=port)
        self._state = _State()
        self._lock = threading.Condition()
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._files = _FileUploads(self)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeSlack:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return self._http.url

    @property
    def api_url(self) -> str:
        """The Web API base URL; slack_sdk needs the trailing slash."""
        return f"{self.base_url}/api/"

    def response_url(self) -> str:
        """A fresh response_url, as Slack puts in commands and interactions."""
        return f"{self.base_url}/response/R{next(self._ids):06d}"

    # -- configuration ------------------------------------------------------------------

    def set_usergroup(self, group_id: str, users: Iterable[str]) -> None:
        with self._lock:
            self._usergroups[group_id] = list(users)

    def post_as(self, user: str, channel: str, text: str,
                blocks: Sequence[Mapping[str, Any]] = ()) -> str:
        """A person (not the bot) posts in `channel`, as if from the Slack client; its ts."""
        message = Message(channel=channel, ts=self._next_ts(), text=text,
                          blocks=[dict(b) for b in blocks], user=user)
        with self._lock:
            self._state.messages.append(message)
            self._lock.notify_all()
        return message.ts

    def delete_message(self, channel: str, ts: str) -> None:
        """A workspace admin deletes a message (Slack lets admins delete any message)."""
        with self._lock:
            before = len(self._state.messages)
            self._state.messages = [m for m in self._state.messages
                                    if not (m.channel == channel and m.ts == ts)]
            if len(self._state.messages) == before:
                raise KeyError(f"no message {ts} in {channel}")

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 0) -> None:
        """Answer the next `times` calls of `method` with 429 and Retry-After."""
        with self._lock:
            self._state.rate_limits[method] = [retry_after] * times

    # -- what happened ------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[RecordedCall]:
        with self._lock:
            return [c for c in self._state.calls if method is None or c.method == method]

    def messages(self, channel: str | None = None) -> list[Message]:
        """Snapshots of the messages as they read now (later edits do not change them)."""
        with self._lock:
            return [
                copy.deepcopy(m)
                for m in self._state.messages
                if channel is None or m.channel == channel
            ]

    def message(self, channel: str, ts: str) -> Message:
        with self._lock:
            for message in self._state.messages:
                if message.channel == channel and message.ts == ts:
                    return copy.deepcopy(message)
        raise KeyError(f"no message {ts} in {channel}")

    def dm_channel(self, user_id: str) -> str:
        return "D" + user_id.lstrip("UW")

    def dms(self, user_id: str) -> list[Message]:
        return self.messages(self.dm_channel(user_id))

    def ephemerals(self, user: str | None = None) -> list[Ephemeral]:
        with self._lock:
            return [e for e in self._state.ephemerals if user is None or e.user == user]

    def responses(self) -> list[ResponsePost]:
        with self._lock:
            return list(self._state.responses)

    def views(self, user: str | None = None) -> list[FakeView]:
        with self._lock:
            return [v for v in self._state.views.values() if user is None or v.user == user]

    def home(self, user: str) -> FakeView | None:
        with self._lock:
            return self._state.homes.get(user)

    def everything_shown(self) -> list[str]:
        """Every text and block payload the app sent anywhere, as JSON strings: what an
        escaping check must scan."""
        with self._lock:
            shown = [json.dumps(c.params) for c in self._state.calls]
            shown += [json.dumps(r.body) for r in self._state.responses]
        return shown

    def wait_for(
        self, found: Callable[[FakeSlack], Any], timeout: float = 5.0, what: str = "condition"
    ) -> Any:
        """Poll until `found(self)` is truthy and return it; fail after `timeout` seconds."""
        return wait_until(lambda: found(self), timeout, what, FakeSlackTimeout, self._lock)

    def wait_for_calls(
        self, method: str, count: int = 1, timeout: float = 5.0
    ) -> list[RecordedCall]:
        result: list[RecordedCall] = self.wait_for(
            lambda s: (calls := s.calls(method)) and len(calls) >= count and calls,
            timeout,
            f"{count} {method} call(s)",
        )
        return result

    def wait_for_responses(self, count: int = 1, timeout: float = 5.0) -> list[ResponsePost]:
        result: list[ResponsePost] = self.wait_for(
            lambda s: len(posts := s.responses()) >= count and posts,
            timeout,
            f"{count} response_url post(s)",
        )
        return result

    # -- HTTP ---------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        if url.path.startswith("/response/"):
            self._record_response(url.path.rsplit("/", 1)[-1], raw)
            self._send(request, 200, b"ok", "text/plain")
            return
        if url.path.startswith(UPLOAD_PATH):
            status = self._files.receive(url.path[len(UPLOAD_PATH):], raw)
            self._send(request, status, b"OK" if status == 200 else b"not found", "text/plain")
            return
        if not url.path.startswith("/api/"):
            self._send(request, 404, b"not found", "text/plain")
            return
        method = url.path[len("/api/") :]
        params = _params(url.query, raw, request.headers.get("Content-Type") or "")
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        token = token or str(params.pop("token", ""))
        status, body, headers = self._answer(method, params, token)
        self._send(request, status, json.dumps(body).encode(), "application/json", headers)

    def _answer(
        self, method: str, params: dict[str, Any], token: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            pending = self._state.rate_limits.get(method)
            if pending:
                retry_after = pending.pop(0)
                body = {"ok": False, "error": "ratelimited"}
                self._record(method, params, 429, body)
                return 429, body, {"Retry-After": str(retry_after)}
        expected = self.app_token if method in APP_TOKEN_METHODS else self.bot_token
        if token != expected:
            body = {"ok": False, "error": self._token_error(token)}
        else:
            handler = getattr(self, "_m_" + method.replace(".", "_"), None)
            if handler is None:
                body = {"ok": False, "error": "unknown_method"}
            else:
                try:
                    body = {"ok": True, **handler(params)}
                except SlackError as exc:
                    body = {"ok": False, "error": exc.error}
        self._record(method, params, 200, body)
        # Slack tells a bot token's scopes on every Web API answer.
        scopes = {"X-OAuth-Scopes": ",".join(self.bot_scopes)} if token == self.bot_token else {}
        return 200, body, scopes

    def _token_error(self, token: str) -> str:
        if not token:
            return "not_authed"
        if token in (self.bot_token, self.app_token):
            return "not_allowed_token_type"  # a real token, of the wrong kind for the method
        return "invalid_auth"

    def _record(
        self, method: str, params: dict[str, Any], status: int, body: dict[str, Any]
    ) -> None:
        with self._lock:
            self._state.calls.append(RecordedCall(method, params, time.time(), status, body))
            self._lock.notify_all()

    def _record_response(self, token: str, raw: bytes) -> None:
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"raw": raw.decode(errors="replace")}
        with self._lock:
            self._state.responses.append(ResponsePost(token, body, time.time()))
            self._lock.notify_all()

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler,
        status: int,
        payload: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(payload)

    # -- methods ------------------------------------------------------------------------

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _channel(self, params: Mapping[str, Any]) -> str:
        channel = str(params.get("channel") or "")
        if not channel:
            raise SlackError("channel_not_found")
        # Posting to a user id posts into the bot's DM with that user, as Slack does.
        return self.dm_channel(channel) if channel[0] in "UW" else channel

    @staticmethod
    def _require(params: Mapping[str, Any], *names: str) -> None:
        for name in names:
            if not params.get(name):
                raise SlackError(f"missing_argument:{name}" if name != "text" else "no_text")

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://fake-workspace.slack.test/",
            "team": "Fake Workspace",
            "user": "connect-access",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": "B0CABOT",
            "is_enterprise_install": False,
        }

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("text") and not params.get("blocks"):
            raise SlackError("no_text")
        channel = self._channel(params)
        message = Message(
            channel=channel,
            ts=self._next_ts(),
            text=str(params.get("text") or ""),
            blocks=list(params.get("blocks") or []),
            thread_ts=params.get("thread_ts"),
        )
        with self._lock:
            self._state.messages.append(message)
        return {"channel": channel, "ts": message.ts, "message": _message_json(message)}

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "channel", "ts")
        channel = self._channel(params)
        with self._lock:
            for message in self._state.messages:
                if message.channel == channel and message.ts == params["ts"]:
                    message.text = str(params.get("text") or message.text)
                    if "blocks" in params:
                        message.blocks = list(params.get("blocks") or [])
                    message.edits += 1
                    return {"channel": channel, "ts": message.ts, "text": message.text}
        raise SlackError("message_not_found")

    def _m_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "channel", "user")
        ephemeral = Ephemeral(
            channel=self._channel(params),
            user=str(params["user"]),
            text=str(params.get("text") or ""),
            blocks=list(params.get("blocks") or []),
        )
        with self._lock:
            self._state.ephemerals.append(ephemeral)
        return {"message_ts": self._next_ts()}

    def _m_conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        users = str(params.get("users") or "")
        if not users or "," in users:
            raise SlackError("user_not_found" if not users else "not_implemented")
        return {"channel": {"id": self.dm_channel(users), "is_im": True}}

    def _m_conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        """Top-level messages (and none of the thread replies), newest first, paged by
        `cursor` as Slack does; needs channels:history (groups:history for G... ids)."""
        channel = self._channel(params)
        needed = "groups:history" if channel.startswith("G") else "channels:history"
        if channel[0] in "CG" and needed not in self.bot_scopes:
            raise SlackError("missing_scope")
        try:
            limit = min(max(int(params.get("limit") or 100), 1), 999)
            offset = int(str(params.get("cursor") or "0").removeprefix("offset:"))
        except ValueError:
            raise SlackError("invalid_cursor") from None
        with self._lock:
            shown = [m for m in self._state.messages if m.channel == channel
                     and (m.thread_ts is None or m.thread_ts == m.ts)]
        shown.sort(key=lambda m: tuple(int(part) for part in m.ts.split(".")), reverse=True)
        page = shown[offset:offset + limit]
        more = offset + limit < len(shown)
        return {"messages": [_message_json(m) for m in page], "has_more": more,
                "response_metadata": {"next_cursor": f"offset:{offset + limit}" if more else ""}}

    def _open_view(self, params: dict[str, Any], method: str) -> dict[str, Any]:
        self._require(params, "trigger_id", "view")
        view = _as_view(params["view"])
        fake_view = FakeView(f"V{next(self._ids):08d}", _user_of_trigger(params), view, method)
        with self._lock:
            self._state.views[fake_view.id] = fake_view
        return {"view": {"id": fake_view.id, **view}}

    def _m_views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._open_view(params, "views.open")

    def _m_views_push(self, params: dict[str, Any]) -> dict[str, Any]:
        # Pushes a modal onto the stack of the one the trigger came from.
        return self._open_view(params, "views.push")

    def _m_views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "view")
        view_id = str(params.get("view_id") or "")
        with self._lock:
            known = self._state.views.get(view_id)
            if known is None:
                raise SlackError("not_found")
            known.view = _as_view(params["view"])
        return {"view": {"id": view_id, **known.view}}

    def _m_views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        self._require(params, "user_id", "view")
        view = _as_view(params["view"])
        if view.get("type") != "home":
            raise SlackError("invalid_arguments")
        user = str(params["user_id"])
        with self._lock:
            home = self._state.homes.get(user)
            if home is None:
                home = FakeView(f"V{next(self._ids):08d}", user, view, "views.publish")
                self._state.homes[user] = home
            home.view = view
        return {"view": {"id": home.id, **view}}

    # -- files (the two-step upload: files.getUploadURLExternal, POST, complete) --------

    def uploads(self, channel: str | None = None) -> list[UploadedFile]:
        """Files whose upload was completed, oldest first (channel: where shared)."""
        return self._files.completed(channel)

    def _m_files_getUploadURLExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._files.start(params)

    def _m_files_completeUploadExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._files.complete(params, self._channel)

    def _m_usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        group = str(params.get("usergroup") or "")
        with self._lock:
            if group not in self._usergroups:
                raise SlackError("no_such_subteam")
            return {"users": list(self._usergroups[group])}

    def _m_users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = str(params.get("user") or "")
        if not user:
            raise SlackError("user_not_found")
        name = self._users.get(user, user)
        return {
            "user": {
                "id": user,
                "name": name.lower(),
                "real_name": name,
                "tz": "UTC",
                "deleted": False,
                "is_bot": False,
            }
        }


UPLOAD_PATH = "/upload/"


@dataclass
class UploadedFile:
    id: str
    filename: str
    length: int
    content: bytes = b""
    title: str = ""
    channel: str | None = None
    initial_comment: str = ""
    completed: bool = False


class _FileUploads:
    """Slack's external upload as the fake plays it: getUploadURLExternal hands out a URL
    on the fake itself, the client POSTs the bytes there (no token, like Slack's
    pre-signed URLs), completeUploadExternal shares the file. Lengths are checked."""

    def __init__(self, fake: FakeSlack) -> None:
        self._fake = fake
        self._files: dict[str, UploadedFile] = {}

    def start(self, params: Mapping[str, Any]) -> dict[str, Any]:
        filename = str(params.get("filename") or "")
        try:
            length = int(params.get("length") or 0)
        except ValueError:
            raise SlackError("invalid_arguments") from None
        if not filename or length <= 0:
            raise SlackError("invalid_arguments")
        file_id = f"F{next(self._fake._ids):08d}"
        with self._fake._lock:
            self._files[file_id] = UploadedFile(file_id, filename, length)
        return {"file_id": file_id, "upload_url": f"{self._fake.base_url}{UPLOAD_PATH}{file_id}"}

    def receive(self, file_id: str, raw: bytes) -> int:
        with self._fake._lock:
            known = self._files.get(file_id)
            if known is None:
                return 404
            known.content = raw
            return 200

    def complete(self, params: Mapping[str, Any],
                 channel_of: Callable[[Mapping[str, Any]], str]) -> dict[str, Any]:
        raw = params.get("files")
        listed = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(listed, list) or not listed:
            raise SlackError("invalid_arguments")
        channel = (channel_of({"channel": params["channel_id"]})
                   if params.get("channel_id") else None)
        done = []
        with self._fake._lock:
            for item in listed:
                known = self._files.get(str(item.get("id")))
                if known is None:
                    raise SlackError("file_not_found")
                if len(known.content) != known.length:
                    raise SlackError("file_upload_size_mismatch")
                known.title = str(item.get("title") or known.filename)
                known.channel = channel
                known.initial_comment = str(params.get("initial_comment") or "")
                known.completed = True
                done.append({"id": known.id, "name": known.filename, "title": known.title,
                             "size": known.length})
            self._fake._lock.notify_all()
        return {"files": done}

    def completed(self, channel: str | None) -> list[UploadedFile]:
        with self._fake._lock:
            return [copy.deepcopy(f) for f in self._files.values()
                    if f.completed and (channel is None or f.channel == channel)]


def _params(query: str, raw: bytes, content_type: str) -> dict[str, Any]:
    params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query).items()}
    if raw:
        if "json" in content_type:
            params.update(json.loads(raw))
        else:
            params.update({k: v[-1] for k, v in parse_qs(raw.decode()).items()})
    for name in JSON_FIELDS:
        # Form-encoded calls carry blocks and views as JSON strings.
        if isinstance(params.get(name), str):
            with contextlib.suppress(json.JSONDecodeError):
                params[name] = json.loads(params[name])
    return params


def _as_view(view: Any) -> dict[str, Any]:
    if not isinstance(view, dict):
        raise SlackError("invalid_arguments")
    return dict(view)


def _user_of_trigger(params: Mapping[str, Any]) -> str:
    # The sandbox client makes trigger ids "<number>.<user id>" so views know their user.
    return str(params.get("trigger_id", "")).rpartition(".")[2]


def _message_json(message: Message) -> dict[str, Any]:
    if message.user is not None:  # a person's message carries no bot_id
        return {"type": "message", "ts": message.ts, "text": message.text,
                "blocks": message.blocks, "user": message.user}
    return {
        "type": "message",
        "ts": message.ts,
        "text": message.text,
        "blocks": message.blocks,
        "user": "U0CABOT",
        "bot_id": "B0CABOT",
    }
