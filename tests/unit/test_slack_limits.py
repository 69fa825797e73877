"""Slack's limits, enforced where they are set: the operator config refuses what would make
a Slack surface invalid (naming the key and the limit), text is cut where it cannot break
an escape, a mention or a link, and the App Home fits Slack's block limit without dropping
a section. Enterprise Grid `W…` user ids work wherever `U…` ids do."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import slacklimits
from bot.config import ConfigError, parse_config
from bot.runtime import DirectApproverDirectory
from bot.slack.blocks import approval, forms, modals, primitives
from bot.slack.blocks.home import home_view
from bot.slack.escape import escape, mention, truncate
from bot.slack.render import render_view
from bot.slack.services import (
    EntryBrief,
    EntryDescription,
    HomeSummary,
    InstanceChoice,
    RequestView,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ENTRY = EntryBrief("data-storage/edit-chat-transcripts", "Edit chat transcripts",
                   "Data storage page", None, "critical")
ARN = "arn:aws:connect:us-east-1:111122223333:instance/{n:08d}-2222-3333-4444-555555555555"


def instances(count: int, alias: Any = "i{n}") -> list[dict[str, str]]:
    return [{"alias": alias.format(n=n), "arn": ARN.format(n=n)} for n in range(count)]


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "operator.yaml")
    return str(caught.value)


# -- config load ------------------------------------------------------------------------

def test_at_most_100_instances() -> None:
    parse_config({"instances": instances(100)})
    assert refused({"instances": instances(101)}) == (
        "operator.yaml: instances: 101 instances configured; at most 100 (Slack's limit on "
        "options in the request form's instance menu)")


def test_alias_length_is_bounded() -> None:
    parse_config({"instances": [{"alias": "a" * 100, "arn": ARN.format(n=1)}]})
    message = refused({"instances": [{"alias": "a" * 151, "arn": ARN.format(n=1)}]})
    assert message.startswith("operator.yaml: instances[0].alias: is 151 characters; at most 100")
    assert "Slack allows 150 in a menu option's value" in message


def test_aliases_must_fit_the_request_forms_private_metadata() -> None:
    # 100 aliases of 40 characters fit every per-item limit but not 3,000 characters.
    message = refused({"instances": instances(100, "{n:02d}-" + "x" * 37)})
    assert message.startswith("operator.yaml: instances: the aliases take ")
    assert "private_metadata; Slack allows 3000" in message


def test_the_largest_accepted_instance_list_makes_a_valid_request_form() -> None:
    aliases = [f"{n:02d}-" + "x" * 17 for n in range(100)]
    config = parse_config({"instances": [{"alias": a, "arn": ARN.format(n=i)}
                                         for i, a in enumerate(aliases)]})
    modal = modals.request_modal(EntryDescription(
        entry=EntryBrief("x" * slacklimits.ENTRY_ID_MAX, "Name", "Page", None, "read"),
        action_count=1, services=("connect",), max_duration=timedelta(hours=8), requires=(),
        instances=tuple(InstanceChoice(i.alias, i.arn) for i in config.instances),
        approvals_needed=1, approval_channel="C0A", auto_approve=False))
    assert len(modal["private_metadata"]) <= slacklimits.PRIVATE_METADATA_MAX
    (menu,) = [b for b in modal["blocks"] if b.get("block_id") == forms.INSTANCE_BLOCK]
    options = menu["element"]["options"]
    assert len(options) == 100
    assert all(len(o["value"]) <= slacklimits.OPTION_VALUE_MAX for o in options)
    assert all(len(o["text"]["text"]) <= 75 for o in options)


def test_approvers_must_fit_the_approval_message() -> None:
    many = [f"U0{n:09d}" for n in range(300)]
    message = refused({"routing": {"tiers": {"write": {"approvers": many}}}})
    assert message.startswith("operator.yaml: routing.tiers.write.approvers: 300 approvers make "
                              "the approval message's approver line")
    assert "Slack allows 3000: put them in a user group (S...) instead" in message
    message = refused({"routing": {"overrides": [{"match": {"page": "Federations"},
                                                  "approvers": many}]}})
    assert message.startswith("operator.yaml: routing.overrides[0].approvers: 300 approvers")


def test_the_longest_accepted_approver_list_fits_the_approval_message() -> None:
    approvers = [f"U0{n:09d}" for n in range(300)]
    while True:
        try:
            config = parse_config({"routing": {"tiers": {"write": {"approvers": approvers}}}})
            break
        except ConfigError:
            approvers.pop()
    route = config.router.tiers["write"]
    view = RequestView(id=7, requester="U0ALICE", entry=ENTRY, instance_alias="prod",
                       duration=timedelta(hours=1), reason="r" * 20, state="pending",
                       approvers=route.approvers, approvals_needed=1, votes=(),
                       created_at=NOW, channel="C0A", message_ts="1.1")
    _, message = approval.approval_message(view, NOW)
    line = message[-1]["elements"][0]["text"]
    assert line.startswith("Approvers: ") and line.endswith("The requester cannot vote.")
    assert len(line) <= slacklimits.TEXT_MAX


# -- W... ids ---------------------------------------------------------------------------

def test_enterprise_grid_user_ids_are_approvers_and_principals() -> None:
    config = parse_config({
        "principals": {"W012ALICE": "arn:aws:iam::111122223333:role/alice"},
        "routing": {"tiers": {"critical": {"approvers": ["W0CISO", "S0SEC"], "approvals": 1}},
                    "overrides": [{"match": {"page": "Federations"}, "approvers": ["W0IAM"]}]},
    })
    assert config.router.tiers["critical"].approvers == ("W0CISO", "S0SEC")
    assert config.router.overrides[0].changes["approvers"] == ("W0IAM",)
    assert config.principals == {"W012ALICE": "arn:aws:iam::111122223333:role/alice"}
    assert DirectApproverDirectory().members(["W0CISO", "U0LEAD"]) == {"W0CISO", "U0LEAD"}
    assert mention("W0CISO") == "<@W0CISO>"


# -- safe truncation --------------------------------------------------------------------

@pytest.mark.parametrize("tail", ["&amp;", "&lt;", "&gt;", "<@U0123ABCD>", "<!subteam^S0SEC>",
                                  "<https://example.com/a/b|the runbook>",
                                  "<!date^1764244800^{date_short_pretty}|2025-11-27>"])
def test_truncation_never_splits_an_escape_a_mention_or_a_link(tail: str) -> None:
    for prefix in range(2980, 3001):
        text = "x" * prefix + tail + " and more text after it"
        cut = truncate(text, 3000)
        assert len(cut) <= 3000
        assert cut.endswith("…")
        kept = cut[prefix:-1]
        assert kept == "" or kept.startswith(tail), (prefix, kept)  # all of it or none


@given(st.text(alphabet="ab &<>@|!U0", max_size=400), st.integers(min_value=1, max_value=300))
def test_truncated_escaped_text_keeps_only_whole_entities(raw: str, limit: int) -> None:
    cut = truncate(escape(raw), limit)
    assert len(cut) <= max(limit, 1)
    body = cut.removesuffix("…")
    # Every & still starts a whole entity; no < or > survives escaping.
    assert re.fullmatch(r"(?:[^&<>]|&amp;|&lt;|&gt;)*", body), cut


def test_section_text_is_cut_safely() -> None:
    text = "x" * 2998 + "&amp; more"
    block = primitives.section(text)
    assert block["text"]["text"] == "x" * 2998 + "…"


# -- App Home ---------------------------------------------------------------------------

def view(request_id: int, state: str, requester: str = "U0ALICE") -> RequestView:
    return RequestView(id=request_id, requester=requester, entry=ENTRY, instance_alias="prod",
                       duration=timedelta(hours=1), reason="Customer escalation INC-4242",
                       state=state, approvers=("S0SEC",), approvals_needed=1, votes=(),
                       created_at=NOW, channel="C0SEC", message_ts="1.1",
                       expires_at=NOW + timedelta(minutes=30) if state == "active" else None)


def home(active: int, pending: int, approvals: int) -> dict[str, Any]:
    return home_view(HomeSummary(
        now=NOW,
        active=tuple(view(n, "active") for n in range(1, active + 1)),
        pending=tuple(view(100 + n, "pending") for n in range(1, pending + 1)),
        awaiting_my_approval=tuple(view(200 + n, "pending", "U0BOB")
                                   for n in range(1, approvals + 1))))


def test_a_home_that_fits_shows_everything_unchanged() -> None:
    page = home(3, 2, 2)
    text = render_view(page)
    assert len(page["blocks"]) == 3 * 2 + 2 + 2 * 2 + 6
    assert "more" not in text
    assert "Waiting for your approval" in text


def test_an_overfull_home_keeps_every_section_and_says_what_is_not_shown() -> None:
    page = home(60, 60, 60)
    assert len(page["blocks"]) <= slacklimits.VIEW_BLOCKS_MAX
    text = render_view(page)
    for heading in ("Active access", "Your pending requests", "Waiting for your approval"):
        assert heading in text
    votes = [b for b in page["blocks"] if b.get("block_id", "").startswith("home_vote_")]
    assert votes, "approval requests are still shown"
    more = [b["elements"][0]["text"] for b in page["blocks"] if b["type"] == "context"
            and "more" in b["elements"][0]["text"]]
    assert len(more) == 3
    shown_active = sum(1 for b in page["blocks"] if b.get("type") == "actions"
                       and not b.get("block_id", "").startswith("home_vote_"))
    assert f"…and {60 - shown_active} more active" in more[0]
    assert "&lt;id&gt;" in more[1]  # escaped: a placeholder, not a Slack link
    assert json.dumps(page).count('"type": "header"') == 1


def test_a_long_approval_queue_is_not_dropped_behind_many_grants() -> None:
    page = home(49, 0, 5)  # 49 grants alone take 98 blocks
    assert len(page["blocks"]) <= slacklimits.VIEW_BLOCKS_MAX
    votes = [b for b in page["blocks"] if b.get("block_id", "").startswith("home_vote_")]
    assert len(votes) >= 1
    assert "Waiting for your approval" in render_view(page)


def test_a_smaller_budget_leaves_room_for_a_following_section() -> None:
    """App Home's auditor section takes its room first; the home fits the rest."""
    page = home_view(HomeSummary(
        now=NOW, active=tuple(view(n, "active") for n in range(1, 40)), pending=(),
        awaiting_my_approval=tuple(view(200 + n, "pending", "U0BOB") for n in range(1, 9))),
        budget=60)
    assert len(page["blocks"]) <= 60
    assert "Waiting for your approval" in render_view(page)
    assert any(b.get("block_id", "").startswith("home_vote_") for b in page["blocks"])
