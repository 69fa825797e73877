"""What every lazy handler gets, and the one place where failures are told to the user."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slack_bolt import App
from slack_bolt.context.respond import Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import request_ids
from bot.ports import ApproverDirectory, Clock
from bot.slack.approvers import ApproverLookupError
from bot.slack.blocks import primitives
from bot.slack.escape import escape
from bot.slack.services import ServiceError, SlackServices
from bot.slack.webapi import DirectMessages

if TYPE_CHECKING:
    from bot.slack.audit_listeners import AuditReviewDeps

logger = logging.getLogger("bot.slack")

GENERIC_FAILURE = (
    "Sorry, something went wrong on our side and nothing was changed. "
    "Try again in a minute; if it keeps happening, give the bot's operator this reference: {ref}"
)


@dataclass(frozen=True)
class SlackDeps:
    services: SlackServices
    approvers: ApproverDirectory
    clock: Clock
    command: str
    dms: DirectMessages
    audit: AuditReviewDeps | None = None  # audit review for auditors (None: not set up)


@dataclass(frozen=True)
class Incoming:
    """One request from Slack, as a lazy handler sees it."""

    body: dict[str, Any]
    client: WebClient
    respond: Respond | None

    @property
    def user_id(self) -> str:
        user = self.body.get("user")
        if isinstance(user, dict):  # interactivity payloads
            return str(user.get("id", ""))
        if "user_id" in self.body:  # slash commands
            return str(self.body["user_id"])
        event = self.body.get("event") or {}  # Events API
        return str(event.get("user", ""))


LazyHandler = Callable[[SlackDeps, Incoming], None]
# What each listener module exposes: bind its ids to its handlers on the app.
Register = Callable[[App, SlackDeps], None]


def tell_user(deps: SlackDeps, incoming: Incoming, text: str, message_blocks: list[Any]) -> None:
    """Show something only the acting user sees: ephemeral where Slack allows it (command
    responses, channel messages), else a DM (modals, App Home)."""
    body = incoming.body
    container = body.get("container") or {}
    channel = (
        (body.get("channel") or {}).get("id") if isinstance(body.get("channel"), dict) else None
    )
    if container.get("type") == "message" and channel and not container.get("is_ephemeral"):
        incoming.client.chat_postEphemeral(
            channel=channel, user=incoming.user_id, text=text, blocks=message_blocks
        )
    elif body.get("response_url") and incoming.respond is not None:
        incoming.respond(
            text=text, blocks=message_blocks, response_type="ephemeral", replace_original=False
        )
    else:
        deps.dms.send(incoming.user_id, text, message_blocks)


def say(deps: SlackDeps, incoming: Incoming, message: str) -> None:
    """tell_user one section of mrkdwn the caller built (user text in it escaped)."""
    tell_user(deps, incoming, message, primitives.notice(message))


def report_failure(deps: SlackDeps, incoming: Incoming, error: Exception) -> None:
    if isinstance(error, ServiceError | ApproverLookupError):
        message = str(error)
        logger.info("refused for %s: %s", incoming.user_id, message)
    else:
        ref = uuid.uuid4().hex[:8]
        logger.error(
            "handler failed (ref %s) for user %s, payload type %s",
            ref,
            incoming.user_id,
            incoming.body.get("type") or "slash_command",
            exc_info=error,
        )
        message = GENERIC_FAILURE.format(ref=ref)
    try:
        tell_user(deps, incoming, escape(message), primitives.error_notice(message))
    except (SlackApiError, OSError) as exc:
        logger.error("could not tell %s about a failure: %s", incoming.user_id, exc)


def lazy(handler: LazyHandler, deps: SlackDeps) -> Callable[..., None]:
    """Adapt a handler to Bolt's lazy listener calling convention, with error reporting:
    Bolt only logs a lazy listener's exception, so the user would otherwise hear nothing."""

    def run(body: dict[str, Any], client: WebClient, respond: Respond | None) -> None:
        incoming = Incoming(body=body, client=client, respond=respond)
        try:
            handler(deps, incoming)
        except Exception as error:
            report_failure(deps, incoming, error)

    run.__name__ = f"lazy_{handler.__name__}"
    run.__qualname__ = run.__name__
    return run


def parse_request_id(text: str) -> int | None:
    return request_ids.parse_request_id(text)
