"""What `/connect-access` answers: the entry card, the pick list, no match, help, the
catalog listing and the requester's status."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from bot.slack.blocks.permissions import entry_value, permissions_button
from bot.slack.blocks.primitives import (
    Block,
    actions,
    button,
    chunk_lines,
    context,
    mrkdwn,
    section,
)
from bot.slack.blocks.request_text import entry_title, request_line
from bot.slack.escape import escape, slack_date
from bot.slack.services import (
    EntryBrief,
    EntryDescription,
    EntryListing,
    RequestView,
    Resolved,
    format_duration,
)

# Action ids of the buttons on these answers.
REQUEST_BUTTON = "request_entry"
PICK_ENTRY = "pick_entry"

STATUS_LINES = 40  # requests listed by `status` (it asks the service for fewer)


def entry_preview(description: EntryDescription) -> list[Block]:
    entry = description.entry
    services = ", ".join(description.services)
    approval = (
        "approved automatically"
        if description.auto_approve
        else f"needs {description.approvals_needed} approval"
        + ("s" if description.approvals_needed != 1 else "")
    )
    fields = [
        mrkdwn(f"*Grants*\n{description.action_count} actions on {escape(services)}"),
        mrkdwn(f"*Tier*\n{description.entry.tier} ({approval})"),
        mrkdwn(f"*Longest grant*\n{format_duration(description.max_duration)}"),
        mrkdwn(
            "*Also includes*\n"
            + (", ".join(escape(r.name) for r in description.requires) or "nothing else")
        ),
    ]
    blocks: list[Block] = [
        {"type": "section", "text": mrkdwn(entry_title(entry)), "fields": fields},
        context(f"Catalog id `{escape(entry.id)}`"),
    ]
    if description.instances:
        blocks.append(
            actions("entry_actions", button("Request access", REQUEST_BUTTON, entry.id, "primary"),
                    permissions_button(entry_value(entry.id)))
        )
    else:
        blocks.append(
            section(
                ":warning: No Amazon Connect instance is configured, so nothing can be "
                "requested yet. Ask the bot's operator to add one under `instances`."
            )
        )
    return blocks


def _choice(entry: EntryBrief) -> Block:
    """An entry with a Choose button that answers with its card."""
    return {
        "type": "section",
        "text": mrkdwn(entry_title(entry)),
        "accessory": button("Choose", PICK_ENTRY, entry.id),
    }


def pick_list(resolved: Resolved) -> list[Block]:
    return [
        section(f"“{escape(resolved.query)}” fits several use cases. Which one do you mean?"),
        *(_choice(entry) for entry in resolved.matches),
    ]


def no_match(resolved: Resolved) -> list[Block]:
    blocks: list[Block] = [
        section(
            f"Nothing in the catalog matches “{escape(resolved.query)}”. "
            "Try the words of the console page, or `/connect-access list` to browse."
        )
    ]
    if resolved.suggestions:
        blocks.append(section("*Did you mean one of these?*"))
        blocks.extend(_choice(entry) for entry in resolved.suggestions)
    return blocks


def help_blocks(command: str) -> list[Block]:
    c = command
    # Escaped as a whole: the placeholders in angle brackets must not read as Slack links.
    return [
        section(
            escape(
                "*connect-access* gives you time-boxed access to Amazon Connect console features.\n"
                f"• `{c} Edit chat transcripts` find a use case, see what it grants, request it\n"
                f"• `{c} list` pages of the console, `{c} list <page>` the use cases on one\n"
                f"• `{c} status` your requests and active access\n"
                f'• `{c} revoke <id>` end your access now ("I\'m done")\n'
                f"• `{c} extend <id> <duration>` ask for more time, e.g. `{c} extend 12 30m`\n"
                f"• `{c} cancel <id>` withdraw a pending request\n"
                f"• `{c} audit [filters]` auditors: review and export the audit trail"
            )
        )
    ]


def listing_blocks(listing: EntryListing, command: str) -> list[Block]:
    if listing.page is None:
        lines = [f"• {escape(p.name)} ({p.entry_count})" for p in listing.pages]
        return [
            section(escape(f"*Console pages* — `{command} list <page>` shows the use cases")),
            *(section(chunk) for chunk in chunk_lines(lines)),
        ]
    lines = [
        f"• {escape(e.name)}"
        + (f" _({escape(e.section)})_" if e.section else "")
        + f" — {e.tier}, `{escape(e.id)}`"
        for e in listing.entries
    ]
    return [section(f"*{escape(listing.page)}*"), *(section(c) for c in chunk_lines(lines))]


def status_blocks(views: Sequence[RequestView], now: datetime) -> list[Block]:
    if not views:
        return [section("You have no requests yet. Try `/connect-access Edit chat transcripts`.")]
    lines = [request_line(v, now) for v in views[:STATUS_LINES]]
    return [section("*Your requests*"), *(section(c) for c in chunk_lines(lines))]


# What the user is told after acting on a request, the same from a button, a modal or a
# command (in mrkdwn, the entry's name escaped).


def ending_access(view: RequestView) -> str:
    return f"Ending your access *#{view.id}* ({escape(view.entry.name)}) now."


def cancelled(view: RequestView) -> str:
    return f"Cancelled request *#{view.id}* ({escape(view.entry.name)})."


def extended(view: RequestView) -> str:
    """An extension applied at once (the tier needs no re-approval)."""
    if view.expires_at is None:
        return f"Extended *#{view.id}*."
    return f"Extended *#{view.id}*; it now ends {slack_date(view.expires_at)}."
