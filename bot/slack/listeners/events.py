"""Events API: App Home, and the guard that keeps Slack's retries from running twice."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltResponse

from bot.slack.audit_listeners import auditor_home_blocks
from bot.slack.blocks import home
from bot.slack.listeners.common import Incoming, SlackDeps, lazy
from bot.slacklimits import VIEW_BLOCKS_MAX


class SeenEvents:
    """event_ids seen recently. Slack retries an event (X-Slack-Retry-Num) when our answer
    was slow or lost, with the same event_id; the first delivery already did the work.
    Kept per process: with several workers a retry may land elsewhere, which for the
    events we handle (App Home) only costs a second publish."""

    def __init__(
        self,
        ttl_seconds: float = 3600.0,
        capacity: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._capacity = capacity
        self._monotonic = monotonic
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, event_id: str) -> bool:
        now = self._monotonic()
        with self._lock:
            while self._seen and (
                len(self._seen) >= self._capacity
                or now - next(iter(self._seen.values())) > self._ttl
            ):
                self._seen.popitem(last=False)
            if event_id in self._seen:
                return False
            self._seen[event_id] = now
            return True


def skip_repeated_events(seen: SeenEvents) -> Callable[..., BoltResponse | None]:
    def skip_repeated_event(body: dict[str, Any], next: Callable[[], None]) -> BoltResponse | None:
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        if isinstance(event_id, str) and not seen.first_time(event_id):
            return BoltResponse(status=200, body="")
        next()
        return None

    return skip_repeated_event


def ack_event() -> None:
    """Events are acknowledged by Bolt itself; the work happens in the lazy listener."""


def run_app_home_opened(deps: SlackDeps, incoming: Incoming) -> None:
    event = incoming.body.get("event") or {}
    if event.get("tab", "home") != "home":
        return
    user = str(event.get("user") or "")
    summary = deps.services.home(user)
    audit_section = auditor_home_blocks(deps, user, room=40)
    # App Home holds 100 blocks: the auditor section keeps its room, and the home's own
    # sections share the rest (home.fit_home_sections), none of them dropped.
    view = home.home_view(summary, budget=VIEW_BLOCKS_MAX - len(audit_section))
    if audit_section:
        view["blocks"] = [*view["blocks"], *audit_section]
    incoming.client.views_publish(user_id=user, view=view)


def register(app: App, deps: SlackDeps) -> None:
    app.event("app_home_opened")(ack=ack_event, lazy=[lazy(run_app_home_opened, deps)])
