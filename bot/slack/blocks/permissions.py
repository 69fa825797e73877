"""The "See permissions" button and modal: exactly what a grant attaches, for the
requester and the approvers.

The modal lists every action of the compiled policy, grouped by service, with its
resources and conditions, the time window every statement carries, and the effects that
outlive it. It stays within Slack's limits (100 blocks per view, 3,000 characters per
section text): long lists are cut into several sections, and if even that would pass 100
blocks the last block says how to see the rest. Everything taken from the catalog or the
compiler goes into mrkdwn escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot import slacklimits
from bot.policy import iso_utc
from bot.request_ids import parse_request_id
from bot.slack.blocks.primitives import TITLE_LIMIT, Block, button, chunk_lines, context, section
from bot.slack.escape import escape, slack_date
from bot.slack.services import PermissionsView, RequestView

# Action id of the "See permissions" button, callback id of its modal.
PERMISSIONS_BUTTON = "see_permissions"
PERMISSIONS_MODAL = "permissions_modal"


def entry_value(entry_id: str) -> str:
    return f"entry:{entry_id}"


def request_value(request_id: int) -> str:
    return f"request:{request_id}"


def parse_value(value: str) -> tuple[str, str] | None:
    """("entry", id) or ("request", number) from a button value; None when malformed."""
    kind, _, rest = value.partition(":")
    if kind == "entry" and rest:
        return kind, rest
    if kind == "request" and parse_request_id(rest) is not None:
        return kind, rest
    return None


def permissions_button(value: str) -> dict[str, Any]:
    return button("See permissions", PERMISSIONS_BUTTON, value)


def warning_lines(effects: Sequence[tuple[str, str]]) -> list[str]:
    """One line per effect that outlives the grant, for the modal and the approval
    message."""
    return [f"• `{escape(action)}`: {escape(reason)}" for action, reason in effects]


def warning_blocks(effects: Sequence[tuple[str, str]]) -> list[Block]:
    if not effects:
        return []
    lines = [":warning: *What this grant can leave behind after it ends*", *warning_lines(effects)]
    return [section(text) for text in chunk_lines(lines)]


def _code_list(items: Sequence[str]) -> str:
    return ", ".join(f"`{escape(item)}`" for item in items)


def _service_lines(view: PermissionsView) -> list[tuple[str, list[str]]]:
    grouped = view.by_service()
    sections: list[tuple[str, list[str]]] = []
    for service, statements in grouped.items():
        count = len({a for s in statements for a in s.actions})
        heading = f"*{escape(service)}* · {count} action{'s' if count != 1 else ''}"
        lines: list[str] = []
        for statement in statements:
            lines.append("• " + _code_list(statement.actions))
            lines.append("      on " + _code_list(statement.resources))
            for condition in statement.conditions:
                lines.append(f"      when `{escape(condition)}`")
        sections.append((heading, lines))
    return sections


def permissions_modal(view: PermissionsView) -> dict[str, Any]:
    """The modal: who gets what, when, and what outlives it."""
    window = (
        f"from {slack_date(view.starts_at)} until {slack_date(view.expires_at)} "
        f"(every statement allows only `{iso_utc(view.starts_at)}` < `aws:CurrentTime` < "
        f"`{iso_utc(view.expires_at)}`)"
    )
    who = (
        f"`{escape(view.principal_arn)}`" if view.principal_known
        else "your IAM principal (found when you request; this preview names a placeholder)"
    )
    where = (f"instance `{escape(view.instance_alias)}`" if view.instance_alias
             else "every instance of the account")
    if view.instance_alias and view.instance_arn:
        where += f" (`{escape(view.instance_arn)}`)"
    if view.instance_is_default:
        where += (", the first configured instance because none is chosen yet (choose one "
                  "in the request form and press See permissions again to see its policy)")
    subject = f"request #{view.request_id}" if view.request_id is not None else "a request"
    blocks: list[Block] = [
        section(f"*{escape(view.entry.name)}*\n`{escape(view.entry.id)}` · "
                        f"{view.entry.tier} tier · {len(view.actions)} actions"),
        context(f"What {subject} attaches to {who} on {where}, {window}."),
    ]
    blocks.extend(warning_blocks(view.persistent_effects))
    if view.notes:
        blocks.append(context("\n".join(escape(n) for n in view.notes)))
    blocks.append({"type": "divider"})
    body: list[Block] = []
    for heading, lines in _service_lines(view):
        texts = chunk_lines([heading, *lines])
        body.extend(section(text) for text in texts)
    room = slacklimits.VIEW_BLOCKS_MAX - len(blocks)
    if len(body) > room:
        shown = body[: room - 1]
        blocks.extend(shown)
        blocks.append(context(
            f"{len(body) - len(shown)} more section(s) do not fit in Slack; "
            f"`connect-access policy \"{escape(view.entry.id)}\" --json` prints the whole "
            "document."))
    else:
        blocks.extend(body)
    return {
        "type": "modal",
        "callback_id": PERMISSIONS_MODAL,
        "title": {"type": "plain_text", "text": "Permissions"[:TITLE_LIMIT]},
        "close": {"type": "plain_text", "text": "Close"},
        "blocks": blocks,
    }


def history_blocks(view: RequestView) -> list[Block]:
    """For approvers: the requester's other live grants and recent requests for the same
    use case (one context block, within Slack's limits)."""
    history = view.history
    if history is None:
        return []

    def item(i: Any) -> str:
        until = f", until {slack_date(i.expires_at)}" if i.expires_at is not None else ""
        return f"#{i.id} {escape(i.entry_name)} ({i.state.replace('_', ' ')}{until})"

    active = "; ".join(item(i) for i in history.other_active) or "none"
    recent = "; ".join(
        f"#{i.id} {i.state.replace('_', ' ')} ({slack_date(i.created_at)})"
        for i in history.recent_same_entry) or "none"
    return [context(f"*Requester's other active grants:* {active}\n"
                     f"*Their recent requests for this use case:* {recent}")]
