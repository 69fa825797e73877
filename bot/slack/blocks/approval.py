"""The approval message in the approval channel: the request, the votes so far, its
outcome, and while votes are open the Approve and Deny buttons (whose ids App Home's
approval section uses too)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.slack.blocks.permissions import (
    history_blocks,
    permissions_button,
    request_value,
    warning_blocks,
)
from bot.slack.blocks.primitives import Block, actions, button, context, header, mrkdwn, section
from bot.slack.blocks.request_text import STATE_LABELS, access_lines, entry_title
from bot.slack.escape import escape, mention, quote, slack_date
from bot.slack.services import RequestView, format_duration
from bot.states import ACTIVE, DENIED, PENDING, REVOKED

# Action ids of the vote buttons.
APPROVE = "approve_request"
DENY = "deny_request"


def vote_buttons(request_id: int) -> list[dict[str, Any]]:
    return [button("Approve", APPROVE, str(request_id), "primary"),
            button("Deny", DENY, str(request_id), "danger")]


def _vote_lines(view: RequestView) -> list[str]:
    lines = []
    for vote in view.votes:
        mark = ":white_check_mark:" if vote.approve else ":no_entry:"
        verb = "approved" if vote.approve else "denied"
        comment = f": {escape(vote.comment)}" if vote.comment else ""
        lines.append(
            f"{mark} {mention(vote.approver)} {verb} {slack_date(vote.at, '{time}')}{comment}"
        )
    return lines


def _outcome_line(view: RequestView, now: datetime) -> str:
    label = STATE_LABELS.get(view.state, view.state)
    if view.state == ACTIVE and view.expires_at is not None:
        extension = (
            f" · extension of {format_duration(view.extension)} waiting for approval"
            if view.extension
            else ""
        )
        return f"*{label}* until {slack_date(view.expires_at)}{extension}"
    if view.state == REVOKED and view.note == "expired":
        return "*:white_circle: Expired* — access was removed at the end of its time"
    if view.note and view.state not in (PENDING, DENIED):
        return f"*{label}* — {escape(view.note)}"
    return f"*{label}*"


def approval_message(view: RequestView, now: datetime) -> tuple[str, list[Block]]:
    entry = view.entry
    text = (
        f"Access request #{view.id} from {mention(view.requester)}: "
        f"{escape(entry.name)} ({entry.tier})"
    )
    approvers = ", ".join(mention(a) for a in view.approvers) or "nobody is configured"
    blocks: list[Block] = [
        header(f"Access request #{view.id}"),
        section(f"{mention(view.requester)} asks for\n{entry_title(entry)}"),
        {
            "type": "section",
            "fields": [
                mrkdwn(f"*Instance*\n`{escape(view.instance_alias)}`"),
                mrkdwn(f"*Duration*\n{format_duration(view.duration)}"),
                mrkdwn(f"*Tier*\n{entry.tier}"),
                mrkdwn(f"*Approvals*\n{view.approvals} of {view.approvals_needed}"),
            ],
        },
        section(f"*Reason*\n{quote(view.reason)}"),
        *warning_blocks(view.persistent_effects),
        *history_blocks(view),
    ]
    access = access_lines(view.access)
    if access:
        blocks.append(section("\n".join(access)))
    votes = _vote_lines(view)
    if votes:
        blocks.append(context("\n".join(votes)))
    blocks.append(section(_outcome_line(view, now)))
    if view.facts.open_for_votes:
        if view.extension is not None:
            blocks.append(section(f"*Extension requested:* {format_duration(view.extension)} more"))
        blocks.append(
            actions(f"vote_{view.id}", *vote_buttons(view.id),
                    permissions_button(request_value(view.id)))
        )
        blocks.append(context(f"Approvers: {approvers}. The requester cannot vote."))
    else:
        blocks.append(actions(f"permissions_{view.id}", permissions_button(request_value(view.id))))
    return text, blocks
