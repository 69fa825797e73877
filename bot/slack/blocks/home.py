"""App Home: the user's active access, their pending requests and what waits for their
vote, fitted to Slack's block limit without dropping a section."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from bot import slacklimits
from bot.decisions import may_cancel
from bot.slack.blocks.approval import vote_buttons
from bot.slack.blocks.dms import grant_buttons
from bot.slack.blocks.primitives import (
    Block,
    View,
    actions,
    button,
    context,
    divider,
    header,
    mrkdwn,
    section,
)
from bot.slack.blocks.request_text import request_line
from bot.slack.escape import escape, mention
from bot.slack.services import HomeSummary, RequestView

# Action id of the Cancel button on a pending request.
CANCEL = "cancel_request"


@dataclass(frozen=True)
class HomeSection:
    """One part of the App Home: its heading, one group of blocks per item, what to say
    when there are none, and what to say about the items that did not fit."""

    heading: list[Block]
    items: list[list[Block]]
    empty: Block
    more: str  # "{n}" is replaced by how many items are not shown


def fit_home_sections(sections: Sequence[HomeSection],
                      budget: int = slacklimits.VIEW_BLOCKS_MAX) -> list[Block]:
    """The sections within Slack's block limit. When everything does not fit, every
    section keeps its heading and gets items in turn, one at a time, so no section is
    dropped; each one cut short ends with a line saying how many more there are."""
    fixed = sum(len(s.heading) + (0 if s.items else 1) for s in sections)
    total = fixed + sum(len(block) for s in sections for block in s.items)
    shown = [len(s.items) for s in sections]
    if total > budget:
        # A summary line for every section with items, then items round-robin.
        remaining = budget - fixed - sum(1 for s in sections if s.items)
        shown = [0] * len(sections)
        progress = True
        while progress:
            progress = False
            for index, part in enumerate(sections):
                if shown[index] < len(part.items) and len(part.items[shown[index]]) <= remaining:
                    remaining -= len(part.items[shown[index]])
                    shown[index] += 1
                    progress = True
    blocks: list[Block] = []
    for part, count in zip(sections, shown, strict=True):
        blocks.extend(part.heading)
        if not part.items:
            blocks.append(part.empty)
        for item in part.items[:count]:
            blocks.extend(item)
        if count < len(part.items):
            blocks.append(context(escape(part.more.replace("{n}", str(len(part.items) - count)))))
    return blocks


def _pending_item(view: RequestView, now: datetime) -> Block:
    """A pending request, with Cancel while bot.decisions.may_cancel allows it (not once
    it is approved and being granted)."""
    block: Block = {"type": "section", "text": mrkdwn(request_line(view, now))}
    if may_cancel(view.facts, view.requester).allowed:
        block["accessory"] = button("Cancel", CANCEL, str(view.id))
    return block


def home_view(summary: HomeSummary, budget: int = slacklimits.VIEW_BLOCKS_MAX) -> View:
    """The App Home in at most `budget` blocks (less than Slack's 100 when another section
    follows)."""
    now = summary.now
    active = HomeSection(
        heading=[header("Your Amazon Connect access"), section("*Active access*")],
        items=[[section(request_line(view, now)), *grant_buttons(view, extend=True)]
               for view in summary.active],
        empty=context(escape("None right now. Use `/connect-access <what you need>`.")),
        more="…and {n} more active. `/connect-access status` lists all your requests.",
    )
    pending = HomeSection(
        heading=[divider(), section("*Your pending requests*")],
        items=[[_pending_item(view, now)] for view in summary.pending],
        empty=context("None."),
        more="…and {n} more pending. `/connect-access status` lists them; "
             "`/connect-access cancel <id>` withdraws one.",
    )
    approvals = HomeSection(
        heading=[divider(), section("*Waiting for your approval*")],
        items=[[section(f"{request_line(view, now)}\nfrom {mention(view.requester)}: "
                        f"{escape(view.reason[:200])}"),
                actions(f"home_vote_{view.id}", *vote_buttons(view.id))]
               for view in summary.awaiting_my_approval],
        empty=context("Nothing to approve."),
        more="…and {n} more waiting for your approval; vote on them in their approval "
             "channels.",
    )
    return {"type": "home", "blocks": fit_home_sections([active, pending, approvals], budget)}
