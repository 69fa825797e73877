"""Block Kit for audit review: the summary an auditor's `/connect-access audit` answers with,
and the auditor section of App Home. Text from people (reasons, filters) is escaped here."""

from __future__ import annotations

from bot.audit_review import (
    FILTER_HELP,
    AuditorHome,
    ChainStatus,
    ReviewedRequest,
    ReviewSummary,
)
from bot.slack.blocks.primitives import Block, context, header, section
from bot.slack.blocks.request_text import STATE_LABELS
from bot.slack.escape import escape, mention, slack_date

SUMMARY_BLOCKS = 45  # of Slack's 50 per message


def _timeline(request: ReviewedRequest) -> str:
    return " → ".join(f"{escape(t.action)} {slack_date(t.at, '{date_short} {time}')}"
                      f" ({mention(t.actor) if t.actor[:1] in 'UWS' else escape(t.actor)})"
                      for t in request.timeline)


def _request_text(request: ReviewedRequest) -> str:
    label = STATE_LABELS.get(request.state, escape(request.state))
    return (f"*#{request.id}* `{escape(request.entry_id)}` ({escape(request.tier)}) by "
            f"{mention(request.requester)}: {label}\n"
            f"> {escape(request.reason[:200])}\n{_timeline(request)}")


def review_summary(summary: ReviewSummary, export_name: str | None) -> list[Block]:
    counts = ", ".join(f"{escape(state.replace('_', ' '))}: {count}"
                       for state, count in sorted(summary.by_outcome.items())) or "none"
    blocks: list[Block] = [
        header("Audit review"),
        section(f"*Selection:* {escape(summary.chosen.describe())}\n"
                f"*Requests:* {summary.total} ({counts})\n*Audit events:* {summary.events}"),
    ]
    if export_name is not None:
        blocks.append(context(f"The {summary.chosen.fmt.upper()} export of these events is in "
                              f"your DM with the bot: `{escape(export_name)}`."))
    for request in summary.requests:
        if len(blocks) >= SUMMARY_BLOCKS - 1:
            break
        blocks.append(section(_request_text(request)))
    shown = min(len(summary.requests), SUMMARY_BLOCKS - 3)
    if summary.total > shown:
        blocks.append(context(f"Showing the newest {shown} of {summary.total}; the export has "
                              "every event. " + escape(FILTER_HELP)))
    return blocks


def _status_text(status: ChainStatus) -> str:
    icon = ":white_check_mark:" if status.ok else ":rotating_light:"
    if not status.anchored:
        icon = ":warning:"
    anchor = ("no anchor yet" if status.last_anchor_at is None else
              f"last anchor: event {status.last_anchor_seq}, "
              f"{slack_date(status.last_anchor_at)}")
    return (f"{icon} *Audit chain:* {escape(status.message)}\n{status.events} events; {anchor}. "
            "Full check: `connect-access audit verify`.")


def auditor_home_section(home: AuditorHome, room: int) -> list[Block]:
    """At most `room` blocks (App Home holds 100)."""
    blocks: list[Block] = [{"type": "divider"}, header("Audit review"),
                           section(_status_text(home.status))]
    blocks.append(section("*Needs attention (irrevocable or failed)*"))
    if not home.attention:
        blocks.append(context("Nothing irrevocable or failed in the last 30 days."))
    for request in home.attention:
        blocks.append(section(_request_text(request)))
    blocks.append(section("*Recent requests*"))
    if not home.recent:
        blocks.append(context("No requests yet."))
    for request in home.recent:
        blocks.append(section(_request_text(request)))
    blocks.append(context(escape("`/connect-access audit` with filters for a summary and an "
                                 "export. " + FILTER_HELP)))
    if len(blocks) > room:
        blocks = [*blocks[:room - 1], context("More in `/connect-access audit`.")]
    return blocks
