"""`/connect-access <text>`: subcommands, else resolve the text to a catalog entry."""

from __future__ import annotations

from typing import Any

from slack_bolt import Ack

from bot.slack import blocks
from bot.slack.escape import escape, slack_date
from bot.slack.listeners.common import Incoming, SlackDeps, parse_request_id
from bot.slack.services import ServiceError, format_duration, parse_duration


def ack_command(ack: Ack) -> None:
    # Everything, even resolving, answers through response_url after this empty ack, so
    # the HTTP response never waits on the database.
    ack()


def _answer(incoming: Incoming, text: str, message_blocks: list[Any]) -> None:
    assert incoming.respond is not None, "slash commands always carry a response_url"
    incoming.respond(text=text, blocks=message_blocks, response_type="ephemeral")


def run_command(deps: SlackDeps, incoming: Incoming) -> None:
    text = str(incoming.body.get("text") or "").strip()
    word, _, rest = text.partition(" ")
    verb = word.lower()
    rest = rest.strip()
    user = incoming.user_id
    services = deps.services

    if verb in ("", "help"):
        _answer(incoming, "How to use connect-access", blocks.help_blocks(deps.command))
        return
    if verb == "list":
        try:
            listing = services.list_entries(rest or None)
        except ServiceError:
            if not rest:
                raise
            # "list instance" is also the name of a use case: fall back to resolving it.
        else:
            _answer(incoming, "Catalog", blocks.listing_blocks(listing, deps.command))
            return
    if verb == "status" and not rest:
        views = services.status(user)
        _answer(incoming, "Your requests", blocks.status_blocks(views, deps.clock.now()))
        return
    request_id = parse_request_id(rest.split(" ", 1)[0]) if rest else None
    if verb in ("revoke", "done", "cancel", "extend") and request_id is not None:
        if verb == "extend":
            amount = rest.split(" ", 1)[1] if " " in rest else ""
            if not amount.strip():
                raise ServiceError(
                    f"Say how much longer, e.g. `{deps.command} extend {request_id} 30m`."
                )
            view = services.extend(request_id, user, parse_duration(amount))
            if view.extension is not None:
                message = (
                    f"Extension of *#{view.id}* by {format_duration(view.extension)} "
                    "sent to the approvers."
                )
            else:
                message = (
                    f"Extended *#{view.id}*; it now ends {slack_date(view.expires_at)}."
                    if view.expires_at
                    else f"Extended *#{view.id}*."
                )
        elif verb == "cancel":
            view = services.cancel(request_id, user)
            message = f"Cancelled request *#{view.id}* ({escape(view.entry.name)})."
        else:
            view = services.revoke(request_id, user)
            message = f"Ending your access *#{view.id}* ({escape(view.entry.name)}) now."
        _answer(incoming, message, blocks.notice(message))
        return
    if verb in ("revoke", "done", "cancel", "extend") and not rest:
        raise ServiceError(
            f"Which request? e.g. `{deps.command} {verb} 12` (see `{deps.command} status`)."
        )

    resolved = services.resolve(text)
    if resolved.status == "match":
        description = services.describe_entry(resolved.matches[0].id)
        _answer(incoming, description.entry.name, blocks.entry_preview(description))
    elif resolved.status == "ambiguous":
        _answer(incoming, "Which use case do you mean?", blocks.pick_list(resolved))
    else:
        _answer(incoming, "No match", blocks.no_match(resolved))
