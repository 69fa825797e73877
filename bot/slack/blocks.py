"""Block Kit builders: every message, modal and App Home view the bot shows.

Builders take plain data from bot.slack.services and return Block Kit dicts. Text that came
from people (queries, reasons, comments) or from the core's messages is escaped here, at the
one place it enters mrkdwn; plain_text fields are shown literally by Slack and need no
escaping. Ids of actions, blocks and views are constants so listeners and tests agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot import slacklimits
from bot.request_rules import (
    DENY_REASON_MAX,
    DENY_REASON_MIN,
    REASON_MAX,
    REASON_MIN,
    deny_reason_problem,
    reason_problem,
)
from bot.slack.escape import channel_link, escape, mention, quote, slack_date, truncate
from bot.slack.permissions import (
    entry_value,
    history_blocks,
    permissions_button,
    request_value,
    warning_blocks,
)
from bot.slack.services import (
    EntryBrief,
    EntryDescription,
    EntryListing,
    HomeSummary,
    RequestView,
    Resolved,
    format_duration,
)
from bot.states import (
    ACTIVE,
    APPROVED,
    CANCELLED,
    DENIED,
    FAILED,
    GRANTING,
    IRREVOCABLE,
    PENDING,
    REVOKED,
    REVOKING,
    TIMED_OUT,
)
from bot.targets import AccessRoute

Block = dict[str, Any]
View = dict[str, Any]

# Action ids (buttons) -----------------------------------------------------------------
REQUEST_BUTTON = "request_entry"
PICK_ENTRY = "pick_entry"
APPROVE = "approve_request"
DENY = "deny_request"
EXTEND = "extend_grant"
DONE = "end_grant"
CANCEL = "cancel_request"

# Views (callback ids) and their input blocks ---------------------------------------------
REQUEST_MODAL = "request_modal"
DENY_MODAL = "deny_modal"
EXTEND_MODAL = "extend_modal"
INSTANCE_BLOCK = "instance"
DURATION_BLOCK = "duration"
REASON_BLOCK = "reason"
DENY_REASON_BLOCK = "deny_reason"
EXTEND_BLOCK = "extension"

STANDARD_DURATIONS = tuple(timedelta(minutes=m) for m in (15, 30, 60, 120, 240, 480, 720, 1440))

STATE_LABELS: dict[str, str] = {
    PENDING: ":hourglass_flowing_sand: Waiting for approval",
    APPROVED: ":white_check_mark: Approved, granting access",
    GRANTING: ":gear: Granting access",
    ACTIVE: ":large_green_circle: Granted",
    REVOKING: ":gear: Removing access",
    REVOKED: ":white_circle: Revoked",
    DENIED: ":no_entry: Denied",
    CANCELLED: ":heavy_multiplication_x: Cancelled",
    TIMED_OUT: ":zzz: Timed out without enough approvals",
    FAILED: ":x: Granting failed, nothing was attached",
    IRREVOCABLE: ":rotating_light: Could not remove access yet, retrying",
}

# Slack's limits on text fields.
PLAIN_TEXT_LIMIT = 75
SECTION_LIMIT = slacklimits.TEXT_MAX


def plain(text: str, limit: int = PLAIN_TEXT_LIMIT) -> dict[str, Any]:
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text, "emoji": True}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": truncate(text, SECTION_LIMIT)}


def section(text: str) -> Block:
    return {"type": "section", "text": mrkdwn(text)}


def context(text: str) -> Block:
    return {"type": "context", "elements": [mrkdwn(text)]}


def header(text: str) -> Block:
    return {"type": "header", "text": plain(text, 150)}


def button(text: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "text": plain(text),
        "action_id": action_id,
        "value": value,
    }
    if style:
        element["style"] = style
    return element


def actions(block_id: str, *elements: dict[str, Any]) -> Block:
    return {"type": "actions", "block_id": block_id, "elements": list(elements)}


def notice(text: str) -> list[Block]:
    """One section of mrkdwn the caller built (user text in it already escaped)."""
    return [section(text)]


def error_notice(message: str) -> list[Block]:
    """A refusal or failure, in the core's words, escaped."""
    return [section(f":warning: {escape(message)}")]


def entry_title(entry: EntryBrief) -> str:
    where = entry.page + (f" / {entry.section}" if entry.section else "")
    return f"*{escape(entry.name)}*\n{escape(where)}"


def time_left(expires_at: datetime | None, now: datetime) -> str:
    if expires_at is None:
        return "not started"
    remaining = expires_at - now
    if remaining <= timedelta(0):
        return "expired"
    # Round up to the minute so "0m left" never shows while access still works.
    minutes = -(-int(remaining.total_seconds()) // 60)
    return f"{format_duration(timedelta(minutes=minutes))} left"


# Slash command answers -----------------------------------------------------------------


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


def pick_list(resolved: Resolved) -> list[Block]:
    blocks: list[Block] = [
        section(f"“{escape(resolved.query)}” fits several use cases. Which one do you mean?")
    ]
    for entry in resolved.matches:
        blocks.append(
            {
                "type": "section",
                "text": mrkdwn(entry_title(entry)),
                "accessory": button("Choose", PICK_ENTRY, entry.id),
            }
        )
    return blocks


def no_match(resolved: Resolved) -> list[Block]:
    blocks: list[Block] = [
        section(
            f"Nothing in the catalog matches “{escape(resolved.query)}”. "
            "Try the words of the console page, or `/connect-access list` to browse."
        )
    ]
    if resolved.suggestions:
        blocks.append(section("*Did you mean one of these?*"))
        for entry in resolved.suggestions:
            blocks.append(
                {
                    "type": "section",
                    "text": mrkdwn(entry_title(entry)),
                    "accessory": button("Choose", PICK_ENTRY, entry.id),
                }
            )
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


def _chunks(lines: Sequence[str], limit: int = SECTION_LIMIT) -> list[str]:
    chunks: list[str] = []
    current = ""
    for line in lines:
        if current and len(current) + len(line) + 1 > limit:
            chunks.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        chunks.append(current)
    return chunks


def listing_blocks(listing: EntryListing, command: str) -> list[Block]:
    if listing.page is None:
        lines = [f"• {escape(p.name)} ({p.entry_count})" for p in listing.pages]
        return [
            section(escape(f"*Console pages* — `{command} list <page>` shows the use cases")),
            *(section(chunk) for chunk in _chunks(lines)),
        ]
    lines = [
        f"• {escape(e.name)}"
        + (f" _({escape(e.section)})_" if e.section else "")
        + f" — {e.tier}, `{escape(e.id)}`"
        for e in listing.entries
    ]
    return [section(f"*{escape(listing.page)}*"), *(section(c) for c in _chunks(lines))]


def request_line(view: RequestView, now: datetime) -> str:
    state = STATE_LABELS.get(view.state, view.state)
    extra = ""
    if view.state == ACTIVE:
        extra = f" — {time_left(view.expires_at, now)}"
    elif view.note:
        extra = f" — {escape(view.note)}"
    return (
        f"*#{view.id}* {escape(view.entry.name)} on `{escape(view.instance_alias)}` "
        f"({format_duration(view.duration)}): {state}{extra}"
    )


def status_blocks(views: Sequence[RequestView], now: datetime) -> list[Block]:
    if not views:
        return [section("You have no requests yet. Try `/connect-access Edit chat transcripts`.")]
    lines = [request_line(v, now) for v in views[:40]]
    return [section("*Your requests*"), *(section(c) for c in _chunks(lines))]


# Request modal --------------------------------------------------------------------------


def duration_choices(maximum: timedelta) -> list[timedelta]:
    choices = [d for d in STANDARD_DURATIONS if d <= maximum]
    if maximum not in choices:
        choices.append(maximum)
    return choices


def _duration_option(duration: timedelta) -> dict[str, Any]:
    return {
        "text": plain(format_duration(duration)),
        "value": str(int(duration.total_seconds())),
    }


def request_modal(description: EntryDescription) -> View:
    entry = description.entry
    instance_options = [{"text": plain(i.alias), "value": i.alias} for i in description.instances]
    instance_select: dict[str, Any] = {
        "type": "static_select",
        "action_id": "value",
        "placeholder": plain("Choose an instance"),
        "options": instance_options,
    }
    if len(instance_options) == 1:
        instance_select["initial_option"] = instance_options[0]
    durations = [_duration_option(d) for d in duration_choices(description.max_duration)]
    metadata = {
        "entry_id": entry.id,
        "max_seconds": int(description.max_duration.total_seconds()),
        "instances": [i.alias for i in description.instances],
    }
    return {
        "type": "modal",
        "callback_id": REQUEST_MODAL,
        "title": plain("Request access", 24),
        "submit": plain("Send request", 24),
        "close": plain("Cancel", 24),
        "private_metadata": json.dumps(metadata),
        "blocks": [
            section(entry_title(entry)),
            context(
                f"{description.action_count} actions · tier {entry.tier} · at most "
                f"{format_duration(description.max_duration)}"
            ),
            actions("request_permissions", permissions_button(entry_value(entry.id))),
            {
                "type": "input",
                "block_id": INSTANCE_BLOCK,
                "label": plain("Amazon Connect instance"),
                "element": instance_select,
            },
            {
                "type": "input",
                "block_id": DURATION_BLOCK,
                "label": plain("For how long"),
                "element": {
                    "type": "static_select",
                    "action_id": "value",
                    "placeholder": plain("Choose a duration"),
                    "options": durations,
                    "initial_option": durations[0],
                },
            },
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": plain("Why do you need it?"),
                "hint": plain(
                    f"Approvers read this. {REASON_MIN} to {REASON_MAX} characters.", 150
                ),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "min_length": REASON_MIN,
                    "max_length": REASON_MAX,
                },
            },
        ],
    }


@dataclass(frozen=True)
class RequestForm:
    entry_id: str
    instance_alias: str
    duration: timedelta
    reason: str


def _state_value(values: Mapping[str, Any], block_id: str) -> str:
    element = (values.get(block_id) or {}).get("value") or {}
    if element.get("type") in ("static_select", "radio_buttons"):
        option = element.get("selected_option") or {}
        return str(option.get("value") or "")
    return str(element.get("value") or "")


def read_instance_choice(values: Mapping[str, Any]) -> str:
    """The instance alias selected in the request modal's state values ("" if none)."""
    return _state_value(values, INSTANCE_BLOCK)


def read_request_form(view: Mapping[str, Any]) -> RequestForm | dict[str, str]:
    """The submitted request modal, or errors keyed by block id (Slack shows each under
    its field). Slack enforces lengths in its own client, but a submission is only a signed
    HTTP request, so every bound is checked again here."""
    values = (view.get("state") or {}).get("values") or {}
    try:
        metadata = json.loads(view.get("private_metadata") or "{}")
    except json.JSONDecodeError:
        metadata = {}
    errors: dict[str, str] = {}
    instance = _state_value(values, INSTANCE_BLOCK)
    if instance not in metadata.get("instances", []):
        errors[INSTANCE_BLOCK] = "Choose one of the listed instances."
    raw_seconds = _state_value(values, DURATION_BLOCK)
    max_seconds = int(metadata.get("max_seconds") or 0)
    seconds = int(raw_seconds) if raw_seconds.isdigit() else 0
    if not 0 < seconds <= max_seconds:
        errors[DURATION_BLOCK] = (
            f"Choose a duration of at most {format_duration(timedelta(seconds=max_seconds))}."
        )
    reason = _state_value(values, REASON_BLOCK).strip()
    if problem := reason_problem(reason):
        errors[REASON_BLOCK] = problem
    entry_id = metadata.get("entry_id")
    if not isinstance(entry_id, str) or not entry_id:
        errors[REASON_BLOCK] = "This form is out of date; run the command again."
    if errors:
        return errors
    return RequestForm(str(entry_id), instance, timedelta(seconds=seconds), reason)


def progress_view(title: str, text: str) -> View:
    return {
        "type": "modal",
        "title": plain(title, 24),
        "close": plain("Close", 24),
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


# Approvals ------------------------------------------------------------------------------


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


def access_lines(access: AccessRoute | None) -> list[str]:
    """Who receives the grant and how they reach it, in mrkdwn (values escaped)."""
    if access is None:
        return []
    account = f"account `{escape(access.account)}`"
    if access.kind == "identity_center":
        portal = (f"<{escape(access.portal_url)}|AWS access portal>" if access.portal_url
                  else "AWS access portal")
        permission_set = (f"`{escape(access.permission_set)}`" if access.permission_set
                          else "`connect-access-…` (named when it is granted)")
        return [f"*Access* {escape(access.target)}, through a permission set of its own "
                "that is assigned only until the grant ends.",
                f"Sign in to the {portal}, choose {account}, then permission set "
                f"{permission_set}."]
    lines = [f"*Access* {escape(access.target)} ({account})"]
    if access.kind == "shared_role" and access.session_name:
        lines.append(f"Only sessions named `{escape(access.session_name)}` of this role "
                     "get it: assume the role with that session name.")
    if access.group_members is not None:
        users = f"{access.group_members} IAM user{'s' if access.group_members != 1 else ''}"
        lines.append(f":warning: This is an IAM group: the grant reaches all {users} in it.")
    return lines


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
    if view.open_for_votes:
        if view.extension is not None:
            blocks.append(section(f"*Extension requested:* {format_duration(view.extension)} more"))
        blocks.append(
            actions(
                f"vote_{view.id}",
                button("Approve", APPROVE, str(view.id), "primary"),
                button("Deny", DENY, str(view.id), "danger"),
                permissions_button(request_value(view.id)),
            )
        )
        blocks.append(context(f"Approvers: {approvers}. The requester cannot vote."))
    else:
        blocks.append(actions(f"permissions_{view.id}", permissions_button(request_value(view.id))))
    return text, blocks


def deny_modal(request_id: int) -> View:
    return {
        "type": "modal",
        "callback_id": DENY_MODAL,
        "title": plain("Deny request", 24),
        "submit": plain("Deny", 24),
        "close": plain("Back", 24),
        "private_metadata": json.dumps({"request_id": request_id}),
        "blocks": [
            section(f"Deny request *#{request_id}*? The requester will see your reason."),
            {
                "type": "input",
                "block_id": DENY_REASON_BLOCK,
                "label": plain("Reason"),
                "element": {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "min_length": DENY_REASON_MIN,
                    "max_length": DENY_REASON_MAX,
                },
            },
        ],
    }


def read_deny_form(view: Mapping[str, Any]) -> tuple[int, str] | dict[str, str]:
    values = (view.get("state") or {}).get("values") or {}
    reason = _state_value(values, DENY_REASON_BLOCK).strip()
    try:
        request_id = int(json.loads(view.get("private_metadata") or "{}")["request_id"])
    except (ValueError, KeyError, TypeError):
        return {DENY_REASON_BLOCK: "This form is out of date; click Deny again."}
    if problem := deny_reason_problem(reason):
        return {DENY_REASON_BLOCK: problem}
    return request_id, reason


def extend_modal(view: RequestView, maximum: timedelta) -> View:
    options = [_duration_option(d) for d in duration_choices(maximum)]
    return {
        "type": "modal",
        "callback_id": EXTEND_MODAL,
        "title": plain("Extend access", 24),
        "submit": plain("Extend", 24),
        "close": plain("Cancel", 24),
        "private_metadata": json.dumps({"request_id": view.id}),
        "blocks": [
            section(f"Extend *#{view.id}* {escape(view.entry.name)}?"),
            {
                "type": "input",
                "block_id": EXTEND_BLOCK,
                "label": plain("Add"),
                "element": {
                    "type": "static_select",
                    "action_id": "value",
                    "options": options,
                    "initial_option": options[0],
                },
            },
        ],
    }


def read_extend_form(view: Mapping[str, Any]) -> tuple[int, timedelta] | dict[str, str]:
    values = (view.get("state") or {}).get("values") or {}
    raw = _state_value(values, EXTEND_BLOCK)
    try:
        request_id = int(json.loads(view.get("private_metadata") or "{}")["request_id"])
    except (ValueError, KeyError, TypeError):
        return {EXTEND_BLOCK: "This form is out of date; click Extend again."}
    if not raw.isdigit() or int(raw) <= 0:
        return {EXTEND_BLOCK: "Choose how long to extend by."}
    return request_id, timedelta(seconds=int(raw))


# Direct messages ------------------------------------------------------------------------

OUTCOME_SENTENCES = {
    "approved": "was approved; granting access now.",
    "denied": "was denied.",
    "cancelled": "was cancelled.",
    "timed_out": "timed out without enough approvals.",
    "failed": "could not be granted; nothing was attached.",
    "revoked": "has ended; the access was removed.",
    "extended": "was extended.",
    "extension_requested": "has an extension waiting for approval.",
    "irrevocable": "could not be removed yet; we keep retrying and the operators were alerted.",
    "grant_queued": "is approved and queued behind AWS IAM's request rate limit; you will "
    "get a message as soon as it is active.",
}


def grant_buttons(view: RequestView, *, extend: bool) -> Block:
    elements = [button("I'm done", DONE, str(view.id), "danger")]
    if extend:
        elements.insert(0, button("Extend", EXTEND, str(view.id), "primary"))
    return actions(f"grant_{view.id}", *elements)


def outcome_dm(view: RequestView, event: str, now: datetime) -> tuple[str, list[Block]]:
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
        blocks.append(grant_buttons(view, extend=False))
        return text, blocks
    sentence = OUTCOME_SENTENCES.get(event, f"is now {view.state.replace('_', ' ')}.")
    text = f"{subject} {sentence}"
    if event == "revoked" and view.note == "expired":
        text = f"{subject} expired; the access was removed."
    lines = [text]
    denial = [v for v in view.votes if not v.approve]
    if event == "denied" and denial:
        lines.append(f"{mention(denial[0].approver)} said:\n{quote(denial[0].comment)}")
    elif view.note and event in ("failed", "revoked", "irrevocable") and view.note != "expired":
        lines.append(f"Detail: {escape(view.note)}")
    return text, [section("\n".join(lines))]


def expiry_reminder(view: RequestView, now: datetime) -> tuple[str, list[Block]]:
    ends = slack_date(view.expires_at) if view.expires_at else "soon"
    text = (
        f"Your access *#{view.id}* to *{escape(view.entry.name)}* on "
        f"`{escape(view.instance_alias)}` ends {ends} "
        f"({time_left(view.expires_at, now)}). Extend it, or end it now if you are done."
    )
    return text, [section(f":alarm_clock: {text}"), grant_buttons(view, extend=True)]


# App Home -------------------------------------------------------------------------------


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


def home_view(summary: HomeSummary, budget: int = slacklimits.VIEW_BLOCKS_MAX) -> View:
    """The App Home in at most `budget` blocks (less than Slack's 100 when another section
    follows)."""
    now = summary.now
    active = HomeSection(
        heading=[header("Your Amazon Connect access"), section("*Active access*")],
        items=[[section(request_line(view, now)), grant_buttons(view, extend=True)]
               for view in summary.active],
        empty=context(escape("None right now. Use `/connect-access <what you need>`.")),
        more="…and {n} more active. `/connect-access status` lists all your requests.",
    )
    pending = HomeSection(
        heading=[{"type": "divider"}, section("*Your pending requests*")],
        items=[[{"type": "section", "text": mrkdwn(request_line(view, now)),
                 "accessory": button("Cancel", CANCEL, str(view.id))}]
               for view in summary.pending],
        empty=context("None."),
        more="…and {n} more pending. `/connect-access status` lists them; "
             "`/connect-access cancel <id>` withdraws one.",
    )
    approvals = HomeSection(
        heading=[{"type": "divider"}, section("*Waiting for your approval*")],
        items=[[section(f"{request_line(view, now)}\nfrom {mention(view.requester)}: "
                        f"{escape(view.reason[:200])}"),
                actions(f"home_vote_{view.id}",
                        button("Approve", APPROVE, str(view.id), "primary"),
                        button("Deny", DENY, str(view.id), "danger"))]
               for view in summary.awaiting_my_approval],
        empty=context("Nothing to approve."),
        more="…and {n} more waiting for your approval; vote on them in their approval "
             "channels.",
    )
    return {"type": "home", "blocks": fit_home_sections([active, pending, approvals], budget)}
