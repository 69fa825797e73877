"""Whole conversations against the real core: Slack over signed HTTP, the database on
SQLite and PostgreSQL, IAM on moto's HTTP server."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from slack_flows_harness import (
    ALICE,
    APPROVALS,
    BOB,
    CAROL,
    CISO,
    CRITICAL_ENTRY,
    DAVE,
    ERIN,
    LEADS,
    SECURITY,
    Flows,
    current_time_bounds,
)

from bot.sandbox.slack_client import HttpResult, find_button


def parse_bound(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_request_approve_grant_expire_revoke(flows: Flows) -> None:
    message = flows.request()
    assert message.channel == APPROVALS
    assert "approve_request" in flows.shown(message)
    assert flows.view(1).state == "pending" and flows.view(1).message_ts == message.ts
    assert flows.inline_policies() == {}

    flows.click(BOB, message, "approve_request")
    dm = flows.driver.wait_for_dm(ALICE, "is active until")
    find_button(dm.blocks, "end_grant", "1")
    view = flows.view(1)
    assert view.state == "active" and [v.approver for v in view.votes] == [BOB]

    # In IAM: exactly the policy the grant row names, time-boxed at the grant's expiry.
    (grant,) = flows.grants(1)
    policies = flows.inline_policies()
    assert list(policies) == grant.policy_names
    (bound,) = {b for doc in policies.values() for b in current_time_bounds(doc)}
    assert abs((parse_bound(bound) - grant.expires_at).total_seconds()) < 1
    assert timedelta(minutes=59) < grant.expires_at - grant.created_at <= timedelta(hours=1)
    shown = flows.wait_for_shown(message, "Granted")
    assert "<@U0BOB> approved" in shown and "approve_request" not in shown

    # Expiry: the sweep, an hour and a bit later.
    assert flows.sweep(timedelta(hours=1, minutes=1)) == ["revoked"]
    assert flows.inline_policies() == {}
    assert flows.view(1).state == "revoked"
    flows.driver.wait_for_dm(ALICE, "expired; the access was removed")
    assert "Expired" in flows.wait_for_shown(message, "Expired")
    # The channel is the record: one message, edited in place.
    assert len(flows.fake.messages(APPROVALS)) == 1
    assert flows.sweep(timedelta(hours=2)) == []  # nothing left to revoke


def test_deny_with_reason(flows: Flows) -> None:
    message = flows.request(ALICE, CRITICAL_ENTRY)
    assert message.channel == SECURITY
    flows.click(ERIN, message, "deny_request")
    modal = flows.fake.wait_for_calls("views.open", 2)[-1].response["view"]
    assert modal["callback_id"] == "deny_modal"
    too_short = flows.driver.submit(ERIN, modal, {"deny_reason": "no"})
    assert set(too_short.json()["errors"]) == {"deny_reason"}
    assert flows.view(1).state == "pending"

    flows.driver.submit(ERIN, modal, {"deny_reason": "Use the staging instance instead"})
    dm = flows.driver.wait_for_dm(ALICE, "was denied")
    assert "Use the staging instance instead" in json.dumps(dm.blocks)
    view = flows.view(1)
    assert view.state == "denied" and [(v.approver, v.approve) for v in view.votes] == [
        (ERIN, False)]
    shown = flows.wait_for_shown(message, "Denied")
    assert "Use the staging instance instead" in shown and "approve_request" not in shown
    assert flows.grants(1) == [] and flows.inline_policies() == {}


def test_critical_tier_needs_two_approvals(flows: Flows) -> None:
    message = flows.request(ALICE, CRITICAL_ENTRY)
    flows.click(CAROL, message, "approve_request")  # in S0SECURITY
    assert "1 of 2" in flows.wait_for_shown(message, "1 of 2")
    assert flows.view(1).state == "pending"
    assert flows.inline_policies() == {} and flows.grants(1) == []

    flows.click(CISO, message, "approve_request")  # listed by user id
    flows.driver.wait_for_dm(ALICE, "is active until")
    view = flows.view(1)
    assert view.state == "active" and [v.approver for v in view.votes] == [CAROL, CISO]
    (grant,) = flows.grants(1)
    assert list(flows.inline_policies()) == grant.policy_names
    assert grant.expires_at - grant.created_at <= timedelta(hours=1)  # the tier's maximum
    assert "2 of 2" in flows.wait_for_shown(message, "Granted")


def test_extend_goes_back_to_the_approvers_and_moves_the_time_box(flows: Flows) -> None:
    message = flows.request()
    flows.click(BOB, message, "approve_request")
    flows.driver.wait_for_dm(ALICE, "is active until")
    (before,) = flows.grants(1)

    post = flows.command(ALICE, "extend 1 30m")
    assert "sent to the approvers" in json.dumps(post.body["blocks"])
    assert flows.view(1).extension == timedelta(minutes=30)
    reopened = flows.fake.wait_for(
        lambda f: "Extension requested" in json.dumps(f.message(message.channel, message.ts)
                                                      .blocks)
        and f.message(message.channel, message.ts),
        what="the approval message to ask for the extension",
    )
    flows.click(CAROL, reopened, "approve_request")
    flows.driver.wait_for_dm(ALICE, "is active until", count=2)
    (after,) = flows.grants(1)
    assert after.id == before.id
    assert after.expires_at - before.expires_at == timedelta(minutes=30)
    view = flows.view(1)
    assert view.state == "active" and view.extension is None
    (bound,) = {b for doc in flows.inline_policies().values() for b in current_time_bounds(doc)}
    assert abs((parse_bound(bound) - after.expires_at).total_seconds()) < 1
    # Past the first expiry the sweep leaves it alone; past the new one it revokes.
    assert flows.sweep(timedelta(hours=1, minutes=5)) == []
    assert flows.sweep(timedelta(hours=1, minutes=31)) == ["revoked"]
    assert flows.inline_policies() == {}


def test_im_done_revokes_at_once(flows: Flows) -> None:
    message = flows.request()
    flows.click(BOB, message, "approve_request")
    dm = flows.driver.wait_for_dm(ALICE, "is active until")
    assert flows.inline_policies() != {}
    flows.click(ALICE, dm, "end_grant")
    flows.driver.wait_for_dm(ALICE, "has ended")
    assert flows.inline_policies() == {}
    (grant,) = flows.grants(1)
    assert grant.state == "revoked" and grant.revoke_reason == "done"
    assert flows.view(1).state == "revoked"
    assert "ended by requester" in flows.wait_for_shown(message, "Revoked")


def test_ambiguous_query_offers_the_candidates(flows: Flows) -> None:
    post = flows.command(ALICE, "chat transcripts")
    shown = json.dumps(post.body["blocks"])
    assert "Edit chat transcripts" in shown and "View chat transcripts" in shown
    find_button(post.body["blocks"], "pick_entry")
    assert flows.counts()["access_requests"] == 0


def test_unknown_query_says_so(flows: Flows) -> None:
    post = flows.command(ALICE, "xyzzy frobnicate")
    assert post.body["text"] == "No match"
    assert "xyzzy frobnicate" in json.dumps(post.body["blocks"])
    assert flows.counts()["access_requests"] == 0


def test_request_ids_no_request_can_have_are_refused_plainly(flows: Flows) -> None:
    """Past PostgreSQL's int4 (and SQLite's int64) the database cannot even be asked, and
    `²` passes str.isdigit but not int(): each is told there is no such request."""
    flows.request(ALICE)
    for text, says in (("revoke 99999999999999999999999", "There is no request #9999999"),
                       ("cancel 3000000000", "There is no request #3000000000"),
                       ("extend #2147483648 1h", "There is no request #2147483648"),
                       ("revoke \u00b2", "No match")):
        post = flows.command(ALICE, text)
        assert says in json.dumps(post.body), (text, post.body)
        assert "something went wrong" not in json.dumps(post.body)
    assert flows.view(1).state == "pending"


def test_wrong_clicks_are_refused_without_any_change(flows: Flows) -> None:
    message = flows.request(ALICE, CRITICAL_ENTRY)
    flows.click(CAROL, message, "approve_request")
    flows.wait_for_shown(message, "1 of 2")
    before = flows.counts()
    edits = flows.message_now(message).edits

    flows.click(DAVE, message, "approve_request")  # not an approver
    flows.click(ALICE, message, "approve_request")  # the requester
    flows.click(CAROL, message, "approve_request")  # already voted
    assert "Only the approvers of request #1" in flows.wait_for_ephemerals(DAVE, 1)[0]
    assert "You asked for request #1" in flows.wait_for_ephemerals(ALICE, 1)[0]
    assert "already voted" in flows.wait_for_ephemerals(CAROL, 1)[0]
    for user in (DAVE, ALICE, CAROL):
        assert all(e.channel == SECURITY for e in flows.fake.ephemerals(user))

    assert flows.counts() == before
    view = flows.view(1)
    assert view.state == "pending" and [v.approver for v in view.votes] == [CAROL]
    assert flows.message_now(message).edits == edits
    assert flows.inline_policies() == {}


def test_twenty_concurrent_approvals_make_one_grant(flows: Flows) -> None:
    message = flows.request()

    def click(approver: str) -> HttpResult:
        return flows.client.click(approver, "approve_request", blocks=message.blocks,
                                  channel_id=message.channel, message_ts=message.ts)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(click, LEADS))
    assert [r.status for r in results] == [200] * 20
    flows.driver.wait_for_dm(ALICE, "is active until")
    # Every approver but the one who won hears why nothing happened.
    flows.fake.wait_for(lambda f: sum(len(f.ephemerals(a)) for a in LEADS) == 19,
                        timeout=20, what="19 refusals")
    view = flows.view(1)
    assert view.state == "active" and len(view.votes) == 1
    assert view.votes[0].approver in LEADS
    (grant,) = flows.grants(1)
    assert list(flows.inline_policies()) == grant.policy_names
    counts = flows.counts()
    assert counts["votes"] == 1 and counts["grants"] == 1
    granted = [m for m in flows.fake.dms(ALICE) if "is active until" in m.text]
    assert len(granted) == 1


def test_injected_mentions_are_escaped_everywhere(flows: Flows) -> None:
    hostile = "<!channel> <!here> <@U0MALLORY> & <https://evil.example|click>"
    flows.command(ALICE, f"Edit chat {hostile}")
    message = flows.request(ALICE, CRITICAL_ENTRY, reason=f"Escalation {hostile}")
    flows.click(ERIN, message, "deny_request")
    modal = flows.fake.wait_for_calls("views.open", 2)[-1].response["view"]
    flows.driver.submit(ERIN, modal, {"deny_reason": f"No {hostile}"})
    flows.driver.wait_for_dm(ALICE, "was denied")
    flows.wait_for_shown(message, "Denied")

    shown = flows.fake.everything_shown()
    assert shown, "nothing was recorded"
    for raw in ("<!channel>", "<!here>", "<@U0MALLORY>", "<https://evil.example"):
        leaks = [s for s in shown if raw in s]
        assert leaks == [], f"{raw} reached Slack unescaped: {leaks[:1]}"
    # ...and it was shown, escaped, where people read it.
    assert "&lt;!channel&gt;" in flows.shown(message)
    assert any("No &lt;!channel&gt;" in json.dumps(m.blocks) for m in flows.fake.dms(ALICE))
    # The database keeps what the person typed, unescaped.
    assert hostile in flows.view(1).reason


def test_app_home_status_and_cancel(flows: Flows) -> None:
    message = flows.request()
    flows.client.open_home(BOB)
    home = flows.fake.wait_for(lambda f: f.home(BOB), what="BOB's App Home")
    waiting = json.dumps(home.view["blocks"])
    assert "Waiting for your approval" in waiting and "Customer escalation INC-42" in waiting
    find_button(home.view["blocks"], "approve_request", "1")

    flows.client.open_home(ALICE)
    mine = flows.fake.wait_for(lambda f: f.home(ALICE), what="ALICE's App Home")
    find_button(mine.view["blocks"], "cancel_request", "1")
    assert "Nothing to approve" in json.dumps(mine.view["blocks"])  # her own is not hers to vote

    status = flows.command(ALICE, "status")
    assert "#1" in json.dumps(status.body["blocks"])
    assert "Waiting for approval" in json.dumps(status.body["blocks"])

    refused = flows.command(BOB, "cancel 1")
    assert "Only the person who asked" in json.dumps(refused.body["blocks"])
    assert flows.view(1).state == "pending"
    done = flows.command(ALICE, "cancel 1")
    assert "Cancelled request *#1*" in json.dumps(done.body["blocks"])
    assert flows.view(1).state == "cancelled"
    assert "Cancelled" in flows.wait_for_shown(message, "Cancelled")
    assert flows.grants(1) == [] and flows.inline_policies() == {}
