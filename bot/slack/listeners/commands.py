"""`/connect-access <text>`: subcommands, else resolve the text to a catalog entry.

Two kinds of command, told apart by `needs_backend` before anything runs:
- catalog lookups (help, list, resolving a use case, a subcommand missing its request id)
  touch only the catalog and the operator config in memory, so the answer goes back in the
  ack itself: the user sees it at once and no lazy work or response_url post follows;
- request commands (status, revoke/done, cancel, extend with a request id) read and change
  the database, so they ack empty at once and answer through response_url from a lazy
  listener.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, App

from bot.request_ids import is_request_number
from bot.slack.blocks import answers, primitives
from bot.slack.escape import escape
from bot.slack.listeners.common import Incoming, SlackDeps, lazy, parse_request_id
from bot.slack.services import ServiceError, format_duration, parse_duration

REQUEST_VERBS = ("revoke", "done", "cancel", "extend")


@dataclass(frozen=True)
class Answer:
    text: str
    blocks: list[Any]


def _split(text: str) -> tuple[str, str]:
    word, _, rest = text.strip().partition(" ")
    return word.lower(), rest.strip()


def needs_backend(text: str) -> bool:
    """True for the commands that read or change requests (answered after the ack)."""
    verb, rest = _split(text)
    if verb == "status":
        return not rest
    if verb in REQUEST_VERBS and rest:
        return parse_request_id(rest.split(" ", 1)[0]) is not None
    return False


def ack_command(ack: Ack) -> None:
    # A request command answers through response_url after this empty ack, so the HTTP
    # response never waits on the database.
    ack()


def answer_from_catalog(deps: SlackDeps, text: str) -> Answer:
    """Help, listings and lookups: pure functions of the catalog and config. Raises
    ServiceError with a message for the user when the text cannot be answered."""
    verb, rest = _split(text)
    services = deps.services
    if verb in ("", "help"):
        return Answer("How to use connect-access", answers.help_blocks(deps.command))
    if verb == "list":
        try:
            listing = services.list_entries(rest or None)
        except ServiceError:
            if not rest:
                raise
            # "list instance" is also the name of a use case: fall back to resolving it.
        else:
            return Answer("Catalog", answers.listing_blocks(listing, deps.command))
    if verb in REQUEST_VERBS and not rest:
        raise ServiceError(
            f"Which request? e.g. `{deps.command} {verb} 12` (see `{deps.command} status`)."
        )
    if verb in REQUEST_VERBS and is_request_number(rest.split(" ", 1)[0]):
        # A number no request can have (needs_backend sent every other one on).
        raise ServiceError(f"There is no request #{rest.split(' ', 1)[0].lstrip('#')}.")
    resolved = services.resolve(text.strip())
    if resolved.status == "match":
        description = services.describe_entry(resolved.matches[0].id)
        return Answer(description.entry.name, answers.entry_preview(description))
    if resolved.status == "ambiguous":
        return Answer("Which use case do you mean?", answers.pick_list(resolved))
    return Answer("No match", answers.no_match(resolved))


def answer_in_ack(deps: SlackDeps, ack: Ack, text: str) -> None:
    try:
        answer = answer_from_catalog(deps, text)
    except ServiceError as refusal:
        message = str(refusal)
        answer = Answer(escape(message), primitives.error_notice(message))
    ack(text=answer.text, blocks=answer.blocks, response_type="ephemeral")


def run_request_command(deps: SlackDeps, incoming: Incoming) -> None:
    """status, revoke/done, cancel and extend with a request id (see needs_backend)."""
    verb, rest = _split(str(incoming.body.get("text") or ""))
    user = incoming.user_id
    services = deps.services
    assert incoming.respond is not None, "slash commands always carry a response_url"
    if verb == "status":
        views = services.status(user)
        incoming.respond(text="Your requests",
                         blocks=answers.status_blocks(views, deps.clock.now()),
                         response_type="ephemeral")
        return
    request_id = parse_request_id(rest.split(" ", 1)[0])
    assert request_id is not None, "needs_backend routes only commands with a request id"
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
            message = answers.extended(view)
    elif verb == "cancel":
        message = answers.cancelled(services.cancel(request_id, user))
    else:
        message = answers.ending_access(services.revoke(request_id, user))
    incoming.respond(text=message, blocks=primitives.notice(message), response_type="ephemeral")


def _is_request_command(command: dict[str, Any]) -> bool:
    return needs_backend(str(command.get("text") or ""))


def register(app: App, deps: SlackDeps) -> None:
    """`deps.command`: request commands first (they need the database, so they answer
    after the ack); every other command is answered in the ack itself. Bolt gives a command
    to the first listener whose matchers pass, so a more specific one (audit) registers
    before this."""
    app.command(deps.command, matchers=[_is_request_command])(
        ack=ack_command, lazy=[lazy(run_request_command, deps)]
    )

    def answer_command(ack: Ack, command: dict[str, Any]) -> None:
        answer_in_ack(deps, ack, str(command.get("text") or ""))

    app.command(deps.command)(answer_command)
