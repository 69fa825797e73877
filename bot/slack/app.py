"""The Bolt app factory and its WSGI entry.

Every listener acks at once (no database, IAM or Web API call before the ack) and does
such work in a Bolt lazy listener; catalog lookups, which need none, are answered in the
ack itself. `process_before_response=True` runs the ack function in the request thread, so
the HTTP answer never queues behind lazy work on the listener executor (with False, Bolt
submits the ack function to the same executor and polls for it every 10 ms); lazy
listeners still run on the executor after the response is sent, which is what a
long-running WSGI server such as gunicorn needs.
"""

from __future__ import annotations

import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt import App, BoltResponse
from slack_bolt.adapter.wsgi import SlackRequestHandler

from bot.ports import ApproverDirectory, Clock, SystemClock
from bot.slack import audit_listeners
from bot.slack.audit_listeners import AuditReviewDeps
from bot.slack.blocks import modals, primitives
from bot.slack.guard import GuardedRequestHandler
from bot.slack.listeners import actions, commands, events, views
from bot.slack.listeners import permissions as permissions_listeners
from bot.slack.listeners.common import GENERIC_FAILURE, Register, SlackDeps
from bot.slack.services import SlackServices
from bot.slack.webapi import DirectMessages, build_web_client

DEFAULT_COMMAND = "/connect-access"
EVENTS_PATH = "/slack/events"

logger = logging.getLogger("bot.slack")


def handle_error(error: Exception, body: dict[str, Any]) -> BoltResponse:
    """The global error handler for failures before or during the ack. (Failures in lazy
    listeners are reported by `listeners.common.lazy`, since Bolt only logs those.)"""
    ref = uuid.uuid4().hex[:8]
    logger.error(
        "listener failed before ack (ref %s): %s",
        ref,
        body.get("type") or "command",
        exc_info=error,
    )
    message = GENERIC_FAILURE.format(ref=ref)
    if body.get("type") == "view_submission":
        # A 200 with a modal keeps the user's input visible and says what happened.
        payload: dict[str, Any] = {
            "response_action": "update",
            "view": modals.failure_view(message),
        }
    else:
        payload = {
            "response_type": "ephemeral",
            "text": message,
            "blocks": primitives.error_notice(message),
        }
    return BoltResponse(
        status=200, body=json.dumps(payload), headers={"content-type": "application/json"}
    )


# Each surface's module binds its own ids. Bolt hands a slash command to the first
# listener whose matchers pass, so audit (a subcommand) goes before commands, whose last
# listener answers every other text.
LISTENERS: tuple[Register, ...] = (
    audit_listeners.register,
    commands.register,
    actions.register,
    permissions_listeners.register,
    views.register,
    events.register,
)


def build_app(
    *,
    signing_secret: str,
    bot_token: str,
    services: SlackServices,
    approvers: ApproverDirectory,
    api_url: str | None = None,
    command: str = DEFAULT_COMMAND,
    clock: Clock | None = None,
    rate_limit_retries: int = 3,
    lazy_workers: int = 8,
    seen_events: events.SeenEvents | None = None,
    audit: AuditReviewDeps | None = None,
) -> App:
    """A Bolt App with every surface's listeners registered. Calls `auth.test` on
    `api_url` at once (Bolt verifies the token), so the Web API must answer by then."""
    if not signing_secret:
        raise ValueError(
            "SLACK_SIGNING_SECRET is empty; copy it from the Slack app's Basic Information page."
        )
    if not bot_token:
        raise ValueError(
            "SLACK_BOT_TOKEN is empty; copy the Bot User OAuth Token (xoxb-...) from the Slack app."
        )
    client = build_web_client(bot_token, api_url, rate_limit_retries=rate_limit_retries)
    app = App(
        signing_secret=signing_secret,
        client=client,
        process_before_response=True,
        listener_executor=ThreadPoolExecutor(
            max_workers=lazy_workers, thread_name_prefix="slack-lazy"
        ),
        name="connect-access",
    )
    deps = SlackDeps(
        services=services,
        approvers=approvers,
        clock=clock or SystemClock(),
        command=command,
        dms=DirectMessages(client),
        audit=audit,
    )
    app.error(handle_error)
    app.middleware(events.skip_repeated_events(seen_events or events.SeenEvents()))
    for register in LISTENERS:
        register(app, deps)
    return app


def build_wsgi_app(app: App, *, signing_secret: str) -> SlackRequestHandler:
    """A WSGI callable serving `app`'s commands, interactivity and events on /slack/events,
    each request verified and checked before Bolt parses it (bot.slack.guard). For
    gunicorn, build it in the worker (`'module:factory()'`), so each worker has its own
    Bolt executor and Web API client."""
    return GuardedRequestHandler(app, signing_secret=signing_secret, path=EVENTS_PATH)
