"""Direct messages to the requester: each outcome of their request, and the reminder
before their access ends, with the Extend and I'm done buttons (App Home shows them too)."""

from __future__ import annotations

from datetime import datetime

from bot.decisions import may_extend, may_revoke
from bot.ports import NotificationEvent
from bot.slack.blocks.primitives import Block, actions, button, section
from bot.slack.blocks.request_text import access_lines, time_left
from bot.slack.escape import escape, mention, quote, slack_date
from bot.slack.services import RequestView
from bot.states import ACTIVE

# Action ids of the grant buttons.
EXTEND = "extend_grant"
DONE = "end_grant"

OUTCOME_SENTENCES = {
    NotificationEvent.APPROVED: "was approved; granting access now.",
    NotificationEvent.DENIED: "was denied.",
    NotificationEvent.CANCELLED: "was cancelled.",
    NotificationEvent.TIMED_OUT: "timed out without enough approvals.",
    NotificationEvent.FAILED: "could not be granted; nothing was attached.",
    NotificationEvent.REVOKED: "has ended; the access was removed.",
    NotificationEvent.EXTENDED: "was extended.",
    NotificationEvent.EXTENSION_REQUESTED: "has an extension waiting for approval.",
    NotificationEvent.IRREVOCABLE: "could not be removed yet; we keep retrying and the operators "
    "were alerted.",
    NotificationEvent.GRANT_QUEUED: "is approved and queued behind AWS IAM's request rate limit; "
    "you will get a message as soon as it is active.",
}


def grant_buttons(view: RequestView, *, extend: bool) -> list[Block]:
    """The buttons the requester may use on their access now (bot.decisions): Extend
    (where `extend` offers it) and I'm done, in one actions block; none when neither is
    allowed (access already ending, or an extension waiting)."""
    facts = view.facts
    elements = []
    if extend and may_extend(facts, view.requester).allowed:
        elements.append(button("Extend", EXTEND, str(view.id), "primary"))
    if may_revoke(facts, view.requester, "done").allowed:
        elements.append(button("I'm done", DONE, str(view.id), "danger"))
    return [actions(f"grant_{view.id}", *elements)] if elements else []


def outcome_dm(view: RequestView, event: NotificationEvent, now: datetime
               ) -> tuple[str, list[Block]]:
    subject = (
        f"Your request *#{view.id}* for *{escape(view.entry.name)}* "
        f"on `{escape(view.instance_alias)}`"
    )
    if event == "granted" or (event == "extended" and view.state == ACTIVE):
        until = slack_date(view.expires_at) if view.expires_at else "its end"
        text = f"{subject} is active until {until} ({time_left(view.expires_at, now)})."
        blocks = [section(f":large_green_circle: {text}")]
        access = access_lines(view.access)
        if access:
            blocks.append(section("\n".join(access)))
        blocks.extend(grant_buttons(view, extend=False))
        return text, blocks
    sentence = OUTCOME_SENTENCES.get(event, f"is now {view.state.replace('_', ' ')}.")
    text = f"{subject} {sentence}"
    if event == NotificationEvent.REVOKED and view.note == "expired":
        text = f"{subject} expired; the access was removed."
    lines = [text]
    denial = [v for v in view.votes if not v.approve]
    if event == NotificationEvent.DENIED and denial:
        lines.append(f"{mention(denial[0].approver)} said:\n{quote(denial[0].comment)}")
    elif view.note and event in (NotificationEvent.FAILED, NotificationEvent.REVOKED,
                                    NotificationEvent.IRREVOCABLE) and view.note != "expired":
        lines.append(f"Detail: {escape(view.note)}")
    return text, [section("\n".join(lines))]


def expiry_reminder(view: RequestView, now: datetime) -> tuple[str, list[Block]]:
    ends = slack_date(view.expires_at) if view.expires_at else "soon"
    text = (
        f"Your access *#{view.id}* to *{escape(view.entry.name)}* on "
        f"`{escape(view.instance_alias)}` ends {ends} "
        f"({time_left(view.expires_at, now)}). Extend it, or end it now if you are done."
    )
    return text, [section(f":alarm_clock: {text}"), *grant_buttons(view, extend=True)]
