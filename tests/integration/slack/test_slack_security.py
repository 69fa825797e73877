"""Request verification, escaping of user text, Events API retries, App Home."""

from __future__ import annotations

import json
import time

import pytest
from slack_harness import ALICE, BOB, CAROL, SIGNING_SECRET, SlackEnv

from bot.sandbox.fake_slack import FakeSlackTimeout
from bot.sandbox.slack_client import find_button, sign


def test_bad_signature_is_rejected_with_401_and_does_nothing(slack_env: SlackEnv) -> None:
    forged = sign("not-the-secret", str(int(time.time())), b"whatever")
    result = slack_env.client.command(ALICE, "help", signature=forged)
    assert result.status == 401
    stale = int(time.time()) - 6 * 60
    old = slack_env.client.command(
        ALICE, "help", timestamp=stale,
    )
    assert old.status == 401
    # Correctly signed, but six minutes old: a replay.
    assert slack_env.client.send(b"x=1", "application/x-www-form-urlencoded", timestamp=stale).status == 401
    with pytest.raises(FakeSlackTimeout):
        slack_env.fake.wait_for_responses(1, timeout=0.3)
    # Also for interactivity and events.
    assert slack_env.client.open_home(ALICE, signature="v0=" + "0" * 64).status == 401
    assert slack_env.client.open_home(ALICE, timestamp=stale).status == 401
    assert slack_env.fake.calls("views.publish") == []


def test_a_correct_signature_is_what_makes_the_difference(slack_env: SlackEnv) -> None:
    # The same client with the right secret is accepted: the 401s above are about signing.
    stamp = str(int(time.time()))
    body = b"command=%2Fconnect-access&text=help&user_id=U0ALICE&response_url=" + (
        slack_env.fake.response_url().encode()
    )
    ok = slack_env.client.send(
        body, "application/x-www-form-urlencoded", signature=sign(SIGNING_SECRET, stamp, body),
        timestamp=int(stamp),
    )
    assert ok.status == 200


INJECTED = "<!channel> <@U123> <!here|here> & <https://evil.example|click>"


def test_injected_mentions_are_escaped_everywhere_they_are_shown(slack_env: SlackEnv) -> None:
    echo_answer = slack_env.command(ALICE, INJECTED)  # echoed back in "nothing matches"
    message = slack_env.request(reason=f"Need it {INJECTED} now please")
    slack_env.click_message(CAROL, message, "deny_request")
    modal = slack_env.fake.wait_for_calls("views.open", 2)[-1].response["view"]
    slack_env.submit(CAROL, modal, {"deny_reason": f"No {INJECTED}"})
    slack_env.wait_for_dm(ALICE, "was denied")
    slack_env.client.open_home(ALICE)
    slack_env.fake.wait_for_calls("views.publish")

    # What the fake saw, plus the lookup's answer, which came back in the command's ack.
    shown = [*slack_env.fake.everything_shown(), json.dumps(echo_answer.body)]
    everything = "\n".join(shown)
    for raw in ("<!channel>", "<@U123>", "<!here", "<https://evil"):
        assert raw not in everything, f"{raw} reached Slack unescaped"
    assert "&lt;!channel&gt; &lt;@U123&gt;" in everything
    # Each place was really reached: the echo, the approval message, the DM.
    assert "&lt;!channel&gt;" in json.dumps(echo_answer.body)
    approval = json.dumps(slack_env.fake.message(message.channel, message.ts).blocks)
    assert approval.count("&lt;!channel&gt;") == 2  # the reason and the deny comment
    assert "&amp;" in approval


def test_event_retries_are_processed_once(slack_env: SlackEnv) -> None:
    first = slack_env.client.open_home(ALICE, event_id="Ev0001")
    assert first.status == 200
    slack_env.fake.wait_for_calls("views.publish", 1)
    retry = slack_env.client.open_home(ALICE, event_id="Ev0001", retry_num=1, retry_reason="http_timeout")
    assert retry.status == 200  # acknowledged, so Slack stops retrying
    fresh = slack_env.client.open_home(ALICE, event_id="Ev0002")
    assert fresh.status == 200
    slack_env.fake.wait_for_calls("views.publish", 2)
    with pytest.raises(FakeSlackTimeout):
        slack_env.fake.wait_for_calls("views.publish", 3, timeout=0.3)


def test_app_home_shows_grants_pending_and_awaiting_approval(slack_env: SlackEnv) -> None:
    granted = slack_env.request()
    slack_env.click_message(BOB, granted, "approve_request")
    slack_env.wait_for_dm(ALICE, "is active until")
    slack_env.request(text="View chat transcripts", reason="Reviewing a complaint")

    slack_env.client.open_home(ALICE)
    slack_env.fake.wait_for(lambda f: f.home(ALICE), what="Alice's home")
    home = slack_env.fake.home(ALICE)
    assert home is not None
    shown = json.dumps(home.view)
    assert "Update Amazon Polly option" in shown and "left" in shown
    find_button(home.view["blocks"], "end_grant", "1")
    find_button(home.view["blocks"], "cancel_request", "2")

    slack_env.client.open_home(CAROL)
    slack_env.fake.wait_for(lambda f: f.home(CAROL), what="Carol's home")
    carol = slack_env.fake.home(CAROL)
    assert carol is not None
    find_button(carol.view["blocks"], "approve_request", "2")
    # Approving from App Home votes and refreshes the view.
    slack_env.client.click(CAROL, "approve_request", blocks=carol.view["blocks"], value="2",
                           view={"id": carol.id, **carol.view})
    slack_env.fake.wait_for(lambda f: slack_env.services.request_view(2).state == "active",
                            what="request 2 to be granted")
    slack_env.fake.wait_for_calls("views.publish", 3)


def test_im_done_from_app_home(slack_env: SlackEnv) -> None:
    message = slack_env.request()
    slack_env.click_message(BOB, message, "approve_request")
    slack_env.wait_for_dm(ALICE, "is active until")
    slack_env.client.open_home(ALICE)
    slack_env.fake.wait_for(lambda f: f.home(ALICE), what="Alice's home")
    home = slack_env.fake.home(ALICE)
    assert home is not None
    slack_env.client.click(ALICE, "end_grant", blocks=home.view["blocks"], value="1",
                           view={"id": home.id, **home.view})
    slack_env.wait_for_dm(ALICE, "Ending your access")
    assert slack_env.services.request_view(1).state == "revoked"
    refreshed = slack_env.fake.wait_for_calls("views.publish", 2)[-1]
    assert "end_grant" not in json.dumps(refreshed.params["view"])


def test_url_verification_answers_the_challenge_only_when_signed(slack_env: SlackEnv) -> None:
    body = json.dumps({"token": "t", "challenge": "c-123", "type": "url_verification"}).encode()
    ok = slack_env.client.send(body, "application/json")
    assert ok.status == 200 and ok.json() == {"challenge": "c-123"}
    forged = slack_env.client.send(body, "application/json", signature="v0=" + "1" * 64)
    assert forged.status == 401
