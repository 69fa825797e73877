from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.decisions import Refusal
from bot.slack.blocks import answers, approval, dms, forms, modals, primitives
from bot.slack.blocks.home import home_view
from bot.slack.blocks.request_text import time_left
from bot.slack.render import render_blocks, render_view
from bot.slack.services import (
    EntryBrief,
    EntryDescription,
    HomeSummary,
    InstanceChoice,
    RequestView,
    ServiceError,
    VoteRecord,
    format_duration,
    parse_duration,
    vote_decision,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ENTRY = EntryBrief("data-storage/edit-chat-transcripts", "Edit chat transcripts",
                   "Data storage page", None, "critical")


def description(max_hours: float = 1, instances: int = 2) -> EntryDescription:
    return EntryDescription(
        entry=ENTRY, action_count=12, services=("connect", "kms", "s3"),
        max_duration=timedelta(hours=max_hours), requires=(),
        instances=tuple(InstanceChoice(f"i{n}", f"arn:{n}") for n in range(instances)),
        approvals_needed=2, approval_channel="C0SEC", auto_approve=False,
    )


def request_view(**changes: Any) -> RequestView:
    base = RequestView(
        id=7, requester="U0ALICE", entry=ENTRY, instance_alias="prod",
        duration=timedelta(hours=1), reason="Customer <!channel> escalation", state="pending",
        approvers=("S0SEC", "U0CISO"), approvals_needed=2, votes=(), created_at=NOW,
        channel="C0SEC", message_ts="1.1",
    )
    return RequestView(**{**base.__dict__, **changes})


def submitted(modal: dict[str, Any], **values: str) -> dict[str, Any]:
    """The modal as Slack would send it back, with values per block id."""
    state: dict[str, Any] = {}
    for block_id, value in values.items():
        element = next(b["element"] for b in modal["blocks"] if b.get("block_id") == block_id)
        if element["type"] == "static_select":
            state[block_id] = {"value": {"type": "static_select", "selected_option": {"value": value}}}
        else:
            state[block_id] = {"value": {"type": "plain_text_input", "value": value}}
    return {**modal, "state": {"values": state}}


def test_duration_choices_never_exceed_the_tier_maximum() -> None:
    assert forms.duration_choices(timedelta(hours=1))[-1] == timedelta(hours=1)
    assert all(d <= timedelta(hours=4) for d in forms.duration_choices(timedelta(hours=4)))
    odd = forms.duration_choices(timedelta(minutes=90))
    assert odd[-1] == timedelta(minutes=90) and timedelta(hours=2) not in odd


def test_request_form_reads_valid_input() -> None:
    modal = modals.request_modal(description())
    form = forms.read_request_form(
        submitted(modal, instance="i1", duration="1800", reason="Investigating INC-42 today")
    )
    assert form == forms.RequestForm(ENTRY.id, "i1", timedelta(minutes=30), "Investigating INC-42 today")


@pytest.mark.parametrize(
    ("values", "fields"),
    [
        ({"instance": "i0", "duration": "1800", "reason": "too short"}, {"reason"}),
        ({"instance": "i0", "duration": "1800", "reason": "x" * 1001}, {"reason"}),
        ({"instance": "i0", "duration": "7200", "reason": "long enough reason"}, {"duration"}),
        ({"instance": "i0", "duration": "-5", "reason": "long enough reason"}, {"duration"}),
        ({"instance": "nope", "duration": "60", "reason": "long enough reason"}, {"instance"}),
        ({"instance": "i0", "duration": "60", "reason": "          x         "}, {"reason"}),
    ],
)
def test_request_form_errors_are_keyed_by_field(values: dict[str, str], fields: set[str]) -> None:
    modal = modals.request_modal(description())
    errors = forms.read_request_form(submitted(modal, **values))
    assert isinstance(errors, dict) and set(errors) == fields


def test_request_modal_preselects_a_single_instance() -> None:
    modal = modals.request_modal(description(instances=1))
    instance = next(b for b in modal["blocks"] if b.get("block_id") == "instance")
    assert instance["element"]["initial_option"]["value"] == "i0"
    assert len(modal["private_metadata"]) < 3000


def test_preview_without_instances_has_no_request_button() -> None:
    shown = json.dumps(answers.entry_preview(description(instances=0)))
    assert answers.REQUEST_BUTTON not in shown and "No Amazon Connect instance" in shown


def test_approval_message_escapes_reason_and_shows_votes() -> None:
    view = request_view(votes=(VoteRecord("U0CISO", True, "", NOW),))
    text, message = approval.approval_message(view, NOW)
    shown = json.dumps(message)
    assert "<!channel>" not in shown and "&lt;!channel&gt;" in shown
    assert "1 of 2" in shown and "<@U0CISO> approved" in shown
    assert approval.APPROVE in shown and approval.DENY in shown
    assert "<@U0ALICE>" in text


def test_approval_message_closes_voting_on_outcome() -> None:
    active = request_view(state="active", expires_at=NOW + timedelta(hours=1))
    _, message = approval.approval_message(active, NOW)
    shown = json.dumps(message)
    assert approval.APPROVE not in shown and "Granted" in shown
    _, expired = approval.approval_message(request_view(state="revoked", note="expired"), NOW)
    assert "Expired" in json.dumps(expired)


def test_denied_dm_quotes_the_escaped_reason() -> None:
    view = request_view(state="denied", votes=(VoteRecord("U0CISO", False, "no <@U9>", NOW),))
    text, dm = dms.outcome_dm(view, "denied", NOW)
    assert "was denied" in text
    assert "&lt;@U9&gt;" in json.dumps(dm) and "<@U9>" not in json.dumps(dm)


def test_expiry_reminder_has_extend_and_done() -> None:
    view = request_view(state="active", expires_at=NOW + timedelta(minutes=9, seconds=10))
    text, dm = dms.expiry_reminder(view, NOW)
    assert "10m left" in text
    shown = json.dumps(dm)
    assert dms.EXTEND in shown and dms.DONE in shown


def test_grant_buttons_offer_only_what_the_decisions_allow() -> None:
    """Extend and I'm done follow bot.decisions (may_extend, may_revoke "done"): an
    extension already waiting hides Extend, access already ending shows neither."""
    ends = NOW + timedelta(minutes=9)
    _, waiting = dms.expiry_reminder(
        request_view(state="active", expires_at=ends, extension=timedelta(minutes=30)), NOW)
    shown = json.dumps(waiting)
    assert dms.EXTEND not in shown and dms.DONE in shown
    _, ending = dms.expiry_reminder(request_view(state="revoking", expires_at=ends), NOW)
    assert [b["type"] for b in ending] == ["section"]  # no empty actions block
    _, granted = dms.outcome_dm(request_view(state="active", expires_at=ends), "granted", NOW)
    shown = json.dumps(granted)
    assert dms.DONE in shown and dms.EXTEND not in shown


def test_home_offers_cancel_only_while_pending() -> None:
    summary = HomeSummary(now=NOW, active=(), pending=(
        request_view(id=2), request_view(id=3, state="approved")), awaiting_my_approval=())
    text = render_view(home_view(summary))
    assert text.count("[Cancel]") == 1
    assert "*#3*" in json.dumps(home_view(summary))


def test_vote_buttons_show_while_votes_are_open() -> None:
    extending = request_view(state="active", expires_at=NOW, extension=timedelta(hours=1))
    for view, open_ in ((request_view(), True), (extending, True),
                        (request_view(state="active", expires_at=NOW), False),
                        (request_view(state="denied"), False)):
        _, message = approval.approval_message(view, NOW)
        assert (approval.APPROVE in json.dumps(message)) is open_, view.state


class CountingDirectory:
    """Approver groups resolved from a table, counting the look-ups (Slack calls)."""

    def __init__(self, members: set[str]) -> None:
        self.known = members
        self.lookups = 0

    def members(self, approvers: Sequence[str]) -> set[str]:
        self.lookups += 1
        return self.known


def test_vote_decision_is_may_vote_with_lookups_only_when_they_matter() -> None:
    directory = CountingDirectory({"U0CAROL"})
    carol = vote_decision(request_view(), "U0CAROL", directory)
    assert carol.allowed and directory.lookups == 1
    dave = vote_decision(request_view(), "U0DAVE", directory)
    assert dave.refusal is Refusal.NOT_APPROVER and "Only the approvers of request #7" in dave.reason
    for view, user, refusal in ((request_view(), "U0ALICE", Refusal.SELF_APPROVAL),
                                (request_view(state="denied"), "U0CAROL", Refusal.WRONG_STATE)):
        before = directory.lookups
        decision = vote_decision(view, user, directory)
        assert decision.refusal is refusal and directory.lookups == before
    voted = request_view(votes=(VoteRecord("U0CAROL", True, "", NOW),))
    assert vote_decision(voted, "U0CAROL", directory).refusal is Refusal.ALREADY_VOTED


def test_home_view_lists_the_three_groups() -> None:
    summary = HomeSummary(
        now=NOW,
        active=(request_view(id=1, state="active", expires_at=NOW + timedelta(minutes=30)),),
        pending=(request_view(id=2),),
        awaiting_my_approval=(request_view(id=3, requester="U0BOB"),),
    )
    home = home_view(summary)
    assert home["type"] == "home"
    text = render_view(home)
    assert "30m left" in text and "[I'm done]" in text and "[Cancel]" in text
    assert "[Approve] [Deny]" in text
    assert "<!channel>" in text  # rendered the way Slack shows the escaped reason


def test_render_shows_what_a_person_reads() -> None:
    _, message = approval.approval_message(request_view(), NOW)
    text = render_blocks(message)
    assert "Access request #7" in text
    assert "@U0ALICE asks for" in text
    assert ">Customer <!channel> escalation" in text
    assert "[Approve] [Deny]" in text


@pytest.mark.parametrize(
    ("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("1d", 86400),
                          (" 1h 15m ", 4500)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "forever", "10", "0m", "5x", "h"])
def test_parse_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(ServiceError):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(timedelta(minutes=90)) == "1h 30m"
    assert format_duration(timedelta(seconds=5)) == "5s"


ALLOWED_CONTROL = ("<@U", "<@W", "<!subteam^", "<!date^", "<#C")


def raw_controls(payload: Any) -> list[str]:
    """Every `<` in a payload's text that does not start a sequence we build on purpose."""
    text = json.dumps(payload, ensure_ascii=False)
    found = []
    for index, char in enumerate(text):
        if char == "<" and not text.startswith(ALLOWED_CONTROL, index):
            found.append(text[index : index + 20])
    return found


def test_no_builder_leaks_a_raw_angle_bracket() -> None:
    hostile = request_view(
        reason="<!channel> <https://x|y>", instance_alias="<!here>", note="<@U1>",
        votes=(VoteRecord("U0CISO", False, "<!everyone>", NOW),),
    )
    payloads: list[Any] = [
        answers.help_blocks("/connect-access"),
        answers.entry_preview(description()),
        modals.request_modal(description()),
        approval.approval_message(hostile, NOW),
        approval.approval_message(blocks_replace(hostile, state="failed"), NOW),
        modals.deny_modal(7),
        modals.extend_modal(hostile, timedelta(hours=1)),
        dms.outcome_dm(blocks_replace(hostile, state="denied"), "denied", NOW),
        dms.outcome_dm(blocks_replace(hostile, state="revoked"), "revoked", NOW),
        dms.expiry_reminder(blocks_replace(hostile, state="active", expires_at=NOW), NOW),
        answers.status_blocks([hostile], NOW),
        home_view(HomeSummary(NOW, (), (hostile,), (hostile,))),
        home_view(HomeSummary(NOW, (), (), ())),
        primitives.error_notice("bad <!channel> input"),
        modals.failure_view("bad <!channel> input"),
        modals.submitted_view(hostile),
    ]
    for payload in payloads:
        assert raw_controls(payload) == [], payload


def blocks_replace(view: RequestView, **changes: Any) -> RequestView:
    return RequestView(**{**view.__dict__, **changes})


def test_time_left_reads_right_at_every_scale() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert time_left(None, now) == "not started"
    assert time_left(now, now) == "expired"
    assert time_left(now - timedelta(seconds=1), now) == "expired"
    assert time_left(now + timedelta(seconds=5), now) == "under a minute left"
    assert time_left(now + timedelta(seconds=59), now) == "under a minute left"
    assert time_left(now + timedelta(seconds=60), now) == "1m left"
    assert time_left(now + timedelta(seconds=61), now) == "2m left"
    assert time_left(now + timedelta(hours=1, minutes=30), now) == "1h 30m left"
