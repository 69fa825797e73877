"""Approvals in the channel: n of m, deny with a reason, refusals, updates in place, DMs."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from slack_harness import (
    ALICE,
    BOB,
    CAROL,
    CISO,
    CRITICAL_ENTRY,
    DAVE,
    ERIN,
    SECURITY,
    SlackEnv,
    SlackEnvFactory,
    slack_config,
)

from bot.ports import Notification
from bot.sandbox.fake_slack import FakeSlack, FakeSlackTimeout
from bot.sandbox.slack_client import HttpResult, find_button


def test_approve_grants_updates_the_message_in_place_and_dms_the_requester(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    slack_env.click_message(BOB, message, "approve_request")
    dm = slack_env.wait_for_dm(ALICE, "is active until")
    assert slack_env.services.request_view(1).state == "active"
    find_button(dm.blocks, "end_grant", "1")
    updated = slack_env.fake.message(message.channel, message.ts)
    shown = json.dumps(updated.blocks)
    assert "Granted" in shown and "<@U0BOB> approved" in shown
    assert "approve_request" not in shown  # voting is over
    # One message in the channel, edited in place: the channel is the record.
    assert len(slack_env.fake.messages(message.channel)) == 1


def test_n_of_m_needs_two_distinct_approvers(slack_env: SlackEnv) -> None:
    message = slack_env.request(ALICE, CRITICAL_ENTRY)
    assert message.channel == SECURITY
    slack_env.click_message(CAROL, message, "approve_request")  # in S0SECURITY
    first = slack_env.wait_for_edit(message, 1)
    assert "1 of 2" in json.dumps(first.blocks)
    assert slack_env.services.request_view(1).state == "pending"
    find_button(first.blocks, "approve_request", "1")  # still open for the second vote

    slack_env.click_message(CISO, message, "approve_request")  # listed directly
    slack_env.wait_for_dm(ALICE, "is active until")
    view = slack_env.services.request_view(1)
    assert view.state == "active"
    assert [v.approver for v in view.votes] == [CAROL, CISO]
    final = slack_env.fake.message(message.channel, message.ts)
    assert "2 of 2" in json.dumps(final.blocks) and "Granted" in json.dumps(final.blocks)


def test_deny_asks_for_a_reason_and_wins(slack_env: SlackEnv) -> None:
    message = slack_env.request(ALICE, CRITICAL_ENTRY)
    slack_env.click_message(CAROL, message, "approve_request")
    slack_env.wait_for_edit(message, 1)
    slack_env.click_message(ERIN, message, "deny_request")
    call = slack_env.fake.wait_for_calls("views.open", 2)[-1]
    modal = call.response["view"]
    assert modal["callback_id"] == "deny_modal"
    assert slack_env.services.request_view(1).state == "pending"  # opening the modal changes nothing

    empty = slack_env.submit(ERIN, modal, {"deny_reason": "no"})
    assert empty.json()["response_action"] == "errors"
    assert set(empty.json()["errors"]) == {"deny_reason"}

    ok = slack_env.submit(ERIN, modal, {"deny_reason": "Use the staging instance instead"})
    assert ok.body == ""  # closes the modal
    dm = slack_env.wait_for_dm(ALICE, "was denied")
    assert "Use the staging instance instead" in json.dumps(dm.blocks)
    view = slack_env.services.request_view(1)
    assert view.state == "denied"
    updated = slack_env.fake.message(message.channel, message.ts)
    shown = json.dumps(updated.blocks)
    assert "Denied" in shown and "Use the staging instance instead" in shown
    assert "approve_request" not in shown


def ephemerals_at_least(user: str, count: int) -> Callable[[FakeSlack], bool]:
    return lambda fake: len(fake.ephemerals(user)) >= count


@pytest.mark.parametrize(
    ("clicker", "expected"),
    [
        (DAVE, "Only the approvers of request #1"),
        (ALICE, "You asked for request #1, so you cannot approve or deny it"),
    ],
)
def test_wrong_people_are_refused_without_any_change(slack_env: SlackEnv, clicker: str, expected: str) -> None:
    message = slack_env.request()
    for count, action in enumerate(("approve_request", "deny_request"), start=1):
        slack_env.click_message(clicker, message, action)
        slack_env.fake.wait_for(ephemerals_at_least(clicker, count), what=f"refusal #{count}")
    refusals = slack_env.fake.ephemerals(clicker)
    assert all(expected in r.text for r in refusals)
    assert all(r.channel == message.channel for r in refusals)
    view = slack_env.services.request_view(1)
    assert view.state == "pending" and view.votes == ()
    assert slack_env.fake.message(message.channel, message.ts).edits == 0
    assert len(slack_env.fake.calls("views.open")) == 1  # only the request modal, no deny modal


def test_second_click_by_the_same_approver_is_refused(slack_env: SlackEnv) -> None:
    message = slack_env.request(ALICE, CRITICAL_ENTRY)
    slack_env.click_message(CAROL, message, "approve_request")
    slack_env.wait_for_edit(message, 1)
    slack_env.click_message(CAROL, message, "approve_request")
    refusal = slack_env.wait_for_ephemeral(CAROL, "already voted")
    assert "each approver votes once" in refusal
    view = slack_env.services.request_view(1)
    assert view.state == "pending" and len(view.votes) == 1
    assert slack_env.fake.message(message.channel, message.ts).edits == 1


def test_twenty_concurrent_clicks_make_one_vote_and_one_grant(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    # Twenty clicks on the message as it was shown, all in flight at once.
    def click(_: int) -> HttpResult:
        return slack_env.client.click(
            BOB, "approve_request", blocks=message.blocks, channel_id=message.channel,
            message_ts=message.ts,
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(click, range(20)))
    assert all(r.status == 200 for r in results)
    slack_env.wait_for_dm(ALICE, "is active until")
    # The other 19 were each told why nothing happened.
    slack_env.fake.wait_for(lambda f: len(f.ephemerals(BOB)) == 19, what="19 refusals")
    view = slack_env.services.request_view(1)
    assert view.state == "active" and len(view.votes) == 1
    grants = [m for m in slack_env.fake.dms(ALICE) if "is active until" in m.text]
    assert len(grants) == 1


def test_im_done_from_the_dm_revokes_and_updates_the_message(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    slack_env.click_message(BOB, message, "approve_request")
    dm = slack_env.wait_for_dm(ALICE, "is active until")
    slack_env.click_message(ALICE, dm, "end_grant")
    slack_env.wait_for_dm(ALICE, "has ended")
    assert slack_env.services.request_view(1).state == "revoked"
    shown = json.dumps(slack_env.fake.message(message.channel, message.ts).blocks)
    assert "Revoked" in shown and "ended by requester" in shown


def test_expiry_updates_the_message_and_tells_the_requester(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    slack_env.click_message(BOB, message, "approve_request")
    slack_env.wait_for_dm(ALICE, "is active until")
    assert slack_env.expire() == ["revoked"]
    slack_env.wait_for_dm(ALICE, "expired")
    assert "Expired" in json.dumps(slack_env.fake.message(message.channel, message.ts).blocks)


def test_failed_grant_is_shown_on_the_message_and_in_a_dm(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    # The requester's role is deleted between the request and the vote: IAM refuses the
    # attach, as it would in production.
    slack_env.flows.iam.delete_role(RoleName="alice-admin")
    slack_env.click_message(BOB, message, "approve_request")
    dm = slack_env.wait_for_dm(ALICE, "could not be granted")
    assert "nothing was attached" in json.dumps(dm.blocks)
    shown = json.dumps(slack_env.wait_for_edit(message, 1).blocks)
    # What ships: the IAM error is not shown in Slack; the request is failed.
    assert "Granting failed, nothing was attached" in shown
    assert slack_env.services.request_view(1).state == "failed"


def test_before_expiry_dm_offers_extend_which_goes_back_to_approvers(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    slack_env.click_message(BOB, message, "approve_request")
    slack_env.wait_for_dm(ALICE, "is active until")
    assert slack_env.remind()  # one grant reminded
    reminder = slack_env.wait_for_dm(ALICE, "Extend it, or end it now")
    find_button(reminder.blocks, "end_grant", "1")
    slack_env.click_message(ALICE, reminder, "extend_grant")
    modal = slack_env.fake.wait_for_calls("views.open", 2)[-1].response["view"]
    assert modal["callback_id"] == "extend_modal"
    assert slack_env.submit(ALICE, modal, {"extension": "900"}).body == ""
    slack_env.wait_for_dm(ALICE, "Asked the approvers to extend")
    view = slack_env.services.request_view(1)
    assert view.extension is not None and view.extension.total_seconds() == 900
    reopened = slack_env.fake.wait_for(
        lambda f: "Extension requested" in json.dumps(f.message(message.channel, message.ts).blocks)
        and f.message(message.channel, message.ts),
        what="the message to show the extension",
    )
    slack_env.click_message(CAROL, reopened, "approve_request")
    slack_env.fake.wait_for(
        lambda f: len([m for m in f.dms(ALICE) if "is active until" in m.text]) == 2,
        what="the DM saying the access was extended",
    )
    view = slack_env.services.request_view(1)
    assert view.extension is None and view.state == "active"


def test_extend_from_the_command(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    slack_env.click_message(BOB, message, "approve_request")
    slack_env.wait_for_dm(ALICE, "is active until")
    post = slack_env.command(ALICE, "extend 1 30m")
    assert "sent to the approvers" in json.dumps(post.body["blocks"])
    refused = slack_env.command(BOB, "extend 1 30m")
    assert "Only the person who holds the access" in json.dumps(refused.body["blocks"])


def test_rate_limited_post_is_retried_after_retry_after(slack_env: SlackEnv) -> None:
    slack_env.fake.rate_limit("chat.postMessage", times=1, retry_after=0)
    message = slack_env.request()
    posts = slack_env.fake.calls("chat.postMessage")
    assert [c.status for c in posts] == [429, 200]
    assert posts[0].params["channel"] == posts[1].params["channel"] == message.channel
    assert len(slack_env.fake.messages(message.channel)) == 1


def test_no_extra_vote_messages_after_refusal(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    slack_env.click_message(DAVE, message, "approve_request")
    slack_env.wait_for_ephemeral(DAVE, "Only the approvers")
    # A refusal never touches the approval message.
    with pytest.raises(FakeSlackTimeout):
        slack_env.fake.wait_for(
            lambda f: f.message(message.channel, message.ts).edits > 0, timeout=0.3
        )


def test_auto_approved_read_tier_grants_without_votes(make_slack_env: SlackEnvFactory) -> None:
    config = slack_config()
    config["routing"]["tiers"]["read"]["auto_approve"] = True
    with make_slack_env(config) as slack_env:
        check_auto_approved(slack_env)


def check_auto_approved(slack_env: SlackEnv) -> None:
    message = slack_env.request(ALICE, "View chat transcripts")
    slack_env.wait_for_dm(ALICE, "is active until")
    view = slack_env.services.request_view(1)
    assert view.state == "active" and view.votes == ()
    shown = json.dumps(slack_env.wait_for_edit(message, 1).blocks)
    assert "Granted" in shown and "approve_request" not in shown
    modal = slack_env.fake.calls("views.update")[-1].params["view"]
    assert "approved automatically" in json.dumps(modal)


def test_user_groups_are_looked_up_once_and_cached(slack_env: SlackEnv) -> None:
    message = slack_env.request(ALICE, CRITICAL_ENTRY)
    slack_env.click_message(CAROL, message, "approve_request")
    slack_env.wait_for_edit(message, 1)
    slack_env.click_message(ERIN, message, "approve_request")
    slack_env.wait_for_dm(ALICE, "is active until")
    lookups = slack_env.fake.calls("usergroups.users.list")
    assert [c.params["usergroup"] for c in lookups] == ["S0SECURITY"]


def test_an_unreadable_approver_group_is_explained(make_slack_env: SlackEnvFactory) -> None:
    config = slack_config()
    config["routing"]["tiers"]["write"]["approvers"] = ["S0GONE"]
    with make_slack_env(config) as slack_env:
        check_unreadable_group(slack_env)


def check_unreadable_group(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    slack_env.click_message(BOB, message, "approve_request")
    refusal = slack_env.wait_for_ephemeral(BOB, "Could not read the members of user group S0GONE")
    assert "no_such_subteam" in refusal
    assert slack_env.services.request_view(1).state == "pending"


def test_an_unexpected_failure_tells_the_user_and_logs_the_detail(
    slack_env: SlackEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(entry_id: str) -> None:
        raise RuntimeError("database is on fire")

    monkeypatch.setattr(slack_env.services, "describe_entry", broken)
    with caplog.at_level("ERROR", logger="bot.slack"):
        post = slack_env.command(ALICE, "Edit chat transcripts")
    shown = json.dumps(post.body)
    assert "something went wrong on our side and nothing was changed" in shown
    assert "database is on fire" not in shown  # details go to the log, not to Slack
    failure = next(r for r in caplog.records if r.name == "bot.slack" and r.exc_info)
    ref = failure.args[0] if isinstance(failure.args, tuple) else ""
    assert ref and str(ref) in shown
    assert "database is on fire" in str(failure.exc_info[1] if failure.exc_info else "")


def test_a_grant_queued_behind_iams_rate_limit_is_told_to_the_requester(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    slack_env.flows.web.runtime.notifier.notify(Notification(
        "grant_queued", 1, {"waited_seconds": 12.0, "expected_wait_seconds": 30.0}))
    dm = slack_env.wait_for_dm(ALICE, "queued behind AWS IAM")
    assert "#1" in dm.text
    assert message.channel  # the approval message stays where it was
