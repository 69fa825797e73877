"""/connect-access over HTTP: subcommands, match, ambiguous, none, and the request modal."""

from __future__ import annotations

import json

from slack_harness import ALICE, APPROVALS, WRITE_ENTRY, SlackEnv

from bot.sandbox.slack_client import find_button


def test_catalog_lookups_are_answered_in_the_ack_with_nothing_posted_later(slack_env: SlackEnv) -> None:
    url = slack_env.fake.response_url()
    result = slack_env.client.command(ALICE, "help", response_url=url)
    assert result.status == 200
    answer = result.json()
    assert answer["response_type"] == "ephemeral"
    text = json.dumps(answer["blocks"])
    for sub in ("list", "status", "revoke", "extend", "cancel"):
        assert f"/connect-access {sub}" in text
    preview = slack_env.client.command(ALICE, WRITE_ENTRY, response_url=url).json()
    assert WRITE_ENTRY in json.dumps(preview["blocks"])
    assert find_button(preview["blocks"], "request_entry")
    # A request command in between is answered through response_url; waiting for it
    # proves the lazy listeners ran, so the lookups would have posted by now too.
    slack_env.client.command(ALICE, "status", response_url=url)
    slack_env.response_to(url)
    token = url.rsplit("/", 1)[-1]
    assert len([r for r in slack_env.fake.responses() if r.token == token]) == 1


def test_request_commands_ack_empty_and_answer_through_response_url(slack_env: SlackEnv) -> None:
    url = slack_env.fake.response_url()
    result = slack_env.client.command(ALICE, "status", response_url=url)
    assert result.status == 200
    assert result.body == ""  # the database is read after the ack, never before it
    post = slack_env.response_to(url)
    assert post.body["response_type"] == "ephemeral"
    assert "no requests" in json.dumps(post.body["blocks"]).lower()


def test_a_refusal_in_a_lookup_is_answered_in_the_ack(slack_env: SlackEnv) -> None:
    answer = slack_env.client.command(ALICE, "revoke").json()
    assert "Which request?" in json.dumps(answer["blocks"])
    answer = slack_env.client.command(ALICE, "list <!channel> nowhere").json()
    text = json.dumps(answer)
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text


def test_empty_text_shows_help(slack_env: SlackEnv) -> None:
    post = slack_env.command(ALICE, "")
    assert "/connect-access status" in json.dumps(post.body["blocks"])


def test_list_pages_then_one_page(slack_env: SlackEnv) -> None:
    overview = json.dumps(slack_env.command(ALICE, "list").body["blocks"])
    assert "Data storage page" in overview and "Flows page" in overview
    page = json.dumps(slack_env.command(ALICE, "list data storage").body["blocks"])
    assert "Edit chat transcripts" in page
    assert "data-storage/edit-chat-transcripts" in page
    assert "Update Amazon Polly option" not in page


def test_list_falls_back_to_resolving_a_use_case_named_list(slack_env: SlackEnv) -> None:
    post = slack_env.command(ALICE, "list instance")
    assert "List instance" in json.dumps(post.body["blocks"])
    find_button(post.body["blocks"], "request_entry", "home/list-instance")


def test_match_shows_what_would_be_granted_with_request_button(slack_env: SlackEnv) -> None:
    post = slack_env.command(ALICE, "Edit chat transcripts")
    text = json.dumps(post.body["blocks"])
    assert "Edit chat transcripts" in text
    assert "Data storage page" in text
    assert "critical" in text and "needs 2 approvals" in text
    assert "1h" in text  # the tier's maximum duration
    assert " actions on " in text
    find_button(post.body["blocks"], "request_entry", "data-storage/edit-chat-transcripts")


def test_ambiguous_offers_candidates_and_choosing_one_shows_it(slack_env: SlackEnv) -> None:
    post = slack_env.command(ALICE, "polly")
    blocks = post.body["blocks"]
    find_button(blocks, "pick_entry", "flows/update-amazon-polly-option")
    find_button(blocks, "pick_entry", "flows/view-amazon-polly-option")
    url = slack_env.fake.response_url()
    slack_env.client.click(ALICE, "pick_entry", blocks=blocks, value="flows/view-amazon-polly-option",
                           channel_id="C0GENERAL", ephemeral=True, response_url=url)
    chosen = slack_env.response_to(url)
    assert chosen.body["replace_original"] is True
    find_button(chosen.body["blocks"], "request_entry", "flows/view-amazon-polly-option")


def test_unknown_query_says_so_with_suggestions(slack_env: SlackEnv) -> None:
    post = slack_env.command(ALICE, "make me admin")
    text = json.dumps(post.body["blocks"])
    assert "Nothing in the catalog matches" in text
    find_button(post.body["blocks"], "pick_entry", "federations/admin-emergency-federation")
    nothing = json.dumps(slack_env.command(ALICE, "xyzzy").body["blocks"])
    assert "Nothing in the catalog matches" in nothing


def test_bad_query_is_explained_not_crashed(slack_env: SlackEnv) -> None:
    post = slack_env.command(ALICE, "x" * 600)
    assert "keep it under 500" in json.dumps(post.body["blocks"])


def test_request_modal_offers_instances_and_bounded_durations(slack_env: SlackEnv) -> None:
    view = slack_env.open_request_modal(ALICE, "Edit chat transcripts")
    inputs = {b["block_id"]: b["element"] for b in view["blocks"] if b["type"] == "input"}
    assert [o["value"] for o in inputs["instance"]["options"]] == ["prod", "staging"]
    durations = [int(o["value"]) for o in inputs["duration"]["options"]]
    assert max(durations) == 3600  # critical tier: at most 1h
    assert inputs["reason"]["multiline"] is True


def test_modal_validation_errors_appear_on_the_fields(slack_env: SlackEnv) -> None:
    view = slack_env.open_request_modal(ALICE, WRITE_ENTRY)
    short = slack_env.submit(ALICE, view, {"instance": "prod", "duration": "3600", "reason": "because"})
    body = short.json()
    assert body["response_action"] == "errors"
    assert set(body["errors"]) == {"reason"}
    assert "at least 10 characters" in body["errors"]["reason"]

    too_long = slack_env.submit(
        ALICE, view, {"instance": "prod", "duration": str(5 * 3600), "reason": "x" * 1001}
    )
    errors = too_long.json()["errors"]
    assert set(errors) == {"duration", "reason"}
    assert "at most 4h" in errors["duration"]

    bad_instance = slack_env.submit(
        ALICE, view, {"instance": "other", "duration": "3600", "reason": "A real reason here"}
    )
    assert set(bad_instance.json()["errors"]) == {"instance"}
    # Nothing was submitted and no approval message was posted.
    assert slack_env.services.status(ALICE) == ()
    assert slack_env.fake.messages(APPROVALS) == []


def test_submit_posts_approval_message_to_the_tiers_channel(slack_env: SlackEnv) -> None:
    message = slack_env.request(ALICE, WRITE_ENTRY)
    assert message.channel == APPROVALS
    text = json.dumps(message.blocks)
    assert "Update Amazon Polly option" in text
    assert "<@U0ALICE>" in text and "Customer escalation INC-42" in text
    find_button(message.blocks, "approve_request", "1")
    find_button(message.blocks, "deny_request", "1")
    view = slack_env.services.request_view(1)
    assert (view.channel, view.message_ts, view.state) == (APPROVALS, message.ts, "pending")
    # The modal was replaced with the outcome.
    update = slack_env.fake.calls("views.update")[-1]
    assert "sent to the approvers" in json.dumps(update.params["view"])


def test_status_lists_my_requests(slack_env: SlackEnv) -> None:
    slack_env.request(ALICE, WRITE_ENTRY)
    text = json.dumps(slack_env.command(ALICE, "status").body["blocks"])
    assert "#1" in text and "Update Amazon Polly option" in text and "Waiting for approval" in text


def test_cancel_withdraws_a_pending_request(slack_env: SlackEnv) -> None:
    message = slack_env.request(ALICE, WRITE_ENTRY)
    post = slack_env.command(ALICE, "cancel 1")
    assert "Cancelled request" in json.dumps(post.body["blocks"])
    assert slack_env.services.request_view(1).state == "cancelled"
    updated = slack_env.wait_for_edit(message, 1)
    assert "Cancelled" in json.dumps(updated.blocks)
    assert "approve_request" not in json.dumps(updated.blocks)


def test_domain_refusals_are_told_plainly(slack_env: SlackEnv) -> None:
    post = slack_env.command(ALICE, "revoke 99")
    assert "There is no request #99" in json.dumps(post.body["blocks"])
    post = slack_env.command(ALICE, "extend 1 forever")
    assert "Duration 'forever' is not understood" in json.dumps(post.body["blocks"])
