"""The modals: the request, deny and extension forms as Slack opens them (the callback ids
the view listeners answer to), and what a submitted request modal turns into."""

from __future__ import annotations

from datetime import timedelta

from bot.slack.blocks.forms import Fields, deny_fields, extend_fields, request_fields
from bot.slack.blocks.permissions import entry_value, permissions_button
from bot.slack.blocks.primitives import TITLE_LIMIT, Block, View, actions, context, plain, section
from bot.slack.blocks.request_text import entry_title
from bot.slack.escape import channel_link, escape
from bot.slack.services import EntryDescription, RequestView, format_duration
from bot.states import ACTIVE

# Views (callback ids) of the forms.
REQUEST_MODAL = "request_modal"
DENY_MODAL = "deny_modal"
EXTEND_MODAL = "extend_modal"


def _form_modal(callback_id: str, title: str, submit: str, close: str, lead: list[Block],
                fields: Fields) -> View:
    return {
        "type": "modal",
        "callback_id": callback_id,
        "title": plain(title, TITLE_LIMIT),
        "submit": plain(submit, TITLE_LIMIT),
        "close": plain(close, TITLE_LIMIT),
        "private_metadata": fields.metadata,
        "blocks": [*lead, *fields.inputs],
    }


def request_modal(description: EntryDescription) -> View:
    entry = description.entry
    lead = [
        section(entry_title(entry)),
        context(
            f"{description.action_count} actions · tier {entry.tier} · at most "
            f"{format_duration(description.max_duration)}"
        ),
        actions("request_permissions", permissions_button(entry_value(entry.id))),
    ]
    return _form_modal(REQUEST_MODAL, "Request access", "Send request", "Cancel", lead,
                       request_fields(description))


def deny_modal(request_id: int) -> View:
    lead = [section(f"Deny request *#{request_id}*? The requester will see your reason.")]
    return _form_modal(DENY_MODAL, "Deny request", "Deny", "Back", lead,
                       deny_fields(request_id))


def extend_modal(view: RequestView, maximum: timedelta) -> View:
    lead = [section(f"Extend *#{view.id}* {escape(view.entry.name)}?")]
    return _form_modal(EXTEND_MODAL, "Extend access", "Extend", "Cancel", lead,
                       extend_fields(view.id, maximum))


# What the request modal shows once submitted ---------------------------------------------


def progress_view(title: str, text: str) -> View:
    return {
        "type": "modal",
        "title": plain(title, TITLE_LIMIT),
        "close": plain("Close", TITLE_LIMIT),
        "blocks": [section(text)],
    }


def submitted_view(view: RequestView) -> View:
    where = f" in {channel_link(view.channel)}" if view.channel else ""
    if view.state == ACTIVE:
        text = (
            f":white_check_mark: Request *#{view.id}* was approved automatically; "
            "access is being granted. I'll send you a DM."
        )
    else:
        text = (
            f":white_check_mark: Request *#{view.id}* for *{escape(view.entry.name)}* was "
            f"sent to the approvers{where}. I'll send you a DM when it is decided."
        )
    return progress_view("Request sent", text)


def failure_view(message: str) -> View:
    return progress_view("Not sent", f":warning: {escape(message)}")
