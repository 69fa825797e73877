"""The forms people fill in: a request, a denial's reason, an extension.

Each form is its input blocks (with Slack's limits on them), the private_metadata its
reader needs back, and the reader that parses and validates the submission. Slack enforces
lengths in its own client, but a submission is only a signed HTTP request, so every bound
is checked again when it is read. Errors are keyed by block id: Slack shows each under its
field. The modals around these forms are in bot.slack.blocks.modals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.request_rules import (
    DENY_REASON_MAX,
    DENY_REASON_MIN,
    REASON_MAX,
    REASON_MIN,
    deny_reason_problem,
    reason_problem,
)
from bot.slack.blocks.primitives import HEADER_LIMIT, Block, plain
from bot.slack.services import EntryDescription, format_duration

# The bounds on reasons are the core's (bot.request_rules): the lifecycle checks them too.

# Input blocks (block ids); every element in them has the action id "value".
INSTANCE_BLOCK = "instance"
DURATION_BLOCK = "duration"
REASON_BLOCK = "reason"
DENY_REASON_BLOCK = "deny_reason"
EXTEND_BLOCK = "extension"
_ELEMENT = "value"

STANDARD_DURATIONS = tuple(timedelta(minutes=m) for m in (15, 30, 60, 120, 240, 480, 720, 1440))


@dataclass(frozen=True)
class Fields:
    """A form's input blocks and the private_metadata its reader needs back."""

    inputs: list[Block]
    metadata: str


@dataclass(frozen=True)
class RequestForm:
    entry_id: str
    instance_alias: str
    duration: timedelta
    reason: str


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


def _input(block_id: str, label: str, element: dict[str, Any],
           hint: str | None = None) -> Block:
    block: Block = {"type": "input", "block_id": block_id, "label": plain(label)}
    if hint is not None:
        block["hint"] = plain(hint, HEADER_LIMIT)
    block["element"] = {**element, "action_id": _ELEMENT}
    return block


def _select(options: list[dict[str, Any]], placeholder: str | None = None,
            initial: dict[str, Any] | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "static_select"}
    if placeholder is not None:
        element["placeholder"] = plain(placeholder)
    element["options"] = options
    if initial is not None:
        element["initial_option"] = initial
    return element


def _text_input(minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "plain_text_input", "multiline": True,
            "min_length": minimum, "max_length": maximum}


# The request form -------------------------------------------------------------------------


def request_fields(description: EntryDescription) -> Fields:
    instance_options = [{"text": plain(i.alias), "value": i.alias} for i in description.instances]
    durations = [_duration_option(d) for d in duration_choices(description.max_duration)]
    metadata = {
        "entry_id": description.entry.id,
        "max_seconds": int(description.max_duration.total_seconds()),
        "instances": [i.alias for i in description.instances],
    }
    return Fields(
        inputs=[
            _input(INSTANCE_BLOCK, "Amazon Connect instance", _select(
                instance_options, "Choose an instance",
                # One instance is chosen already; with several the person picks.
                instance_options[0] if len(instance_options) == 1 else None)),
            _input(DURATION_BLOCK, "For how long",
                   _select(durations, "Choose a duration", durations[0])),
            _input(REASON_BLOCK, "Why do you need it?", _text_input(REASON_MIN, REASON_MAX),
                   hint=f"Approvers read this. {REASON_MIN} to {REASON_MAX} characters."),
        ],
        metadata=json.dumps(metadata),
    )


def _state_value(values: Mapping[str, Any], block_id: str) -> str:
    element = (values.get(block_id) or {}).get(_ELEMENT) or {}
    if element.get("type") in ("static_select", "radio_buttons"):
        option = element.get("selected_option") or {}
        return str(option.get("value") or "")
    return str(element.get("value") or "")


def _values(view: Mapping[str, Any]) -> Mapping[str, Any]:
    return (view.get("state") or {}).get("values") or {}


def read_instance_choice(values: Mapping[str, Any]) -> str:
    """The instance alias selected in the request form's state values ("" if none)."""
    return _state_value(values, INSTANCE_BLOCK)


def read_request_form(view: Mapping[str, Any]) -> RequestForm | dict[str, str]:
    """The submitted request form, or errors keyed by block id."""
    values = _values(view)
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


# The forms about one request (deny, extend) -------------------------------------------------


def _request_metadata(request_id: int) -> str:
    return json.dumps({"request_id": request_id})


def _read_request_id(view: Mapping[str, Any]) -> int | None:
    try:
        return int(json.loads(view.get("private_metadata") or "{}")["request_id"])
    except (ValueError, KeyError, TypeError):
        return None


def deny_fields(request_id: int) -> Fields:
    return Fields(
        inputs=[_input(DENY_REASON_BLOCK, "Reason",
                       _text_input(DENY_REASON_MIN, DENY_REASON_MAX))],
        metadata=_request_metadata(request_id),
    )


def read_deny_form(view: Mapping[str, Any]) -> tuple[int, str] | dict[str, str]:
    reason = _state_value(_values(view), DENY_REASON_BLOCK).strip()
    request_id = _read_request_id(view)
    if request_id is None:
        return {DENY_REASON_BLOCK: "This form is out of date; click Deny again."}
    if problem := deny_reason_problem(reason):
        return {DENY_REASON_BLOCK: problem}
    return request_id, reason


def extend_fields(request_id: int, maximum: timedelta) -> Fields:
    options = [_duration_option(d) for d in duration_choices(maximum)]
    return Fields(
        inputs=[_input(EXTEND_BLOCK, "Add", _select(options, initial=options[0]))],
        metadata=_request_metadata(request_id),
    )


def read_extend_form(view: Mapping[str, Any]) -> tuple[int, timedelta] | dict[str, str]:
    raw = _state_value(_values(view), EXTEND_BLOCK)
    request_id = _read_request_id(view)
    if request_id is None:
        return {EXTEND_BLOCK: "This form is out of date; click Extend again."}
    if not raw.isdigit() or int(raw) <= 0:
        return {EXTEND_BLOCK: "Choose how long to extend by."}
    return request_id, timedelta(seconds=int(raw))
