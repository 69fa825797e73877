""""See permissions": opened from the entry card, the request modal and the approval
message, over signed HTTP against the real core; the modal must list every action of the
compiled policy (for a grant: of the policy IAM actually holds), its resources,
conditions and window, and the effects that outlive the grant, within Slack's limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from slack_flows_harness import (
    ACCOUNT,
    ALICE,
    BOB,
    CAROL,
    CISO,
    INSTANCE_ARN,
    ROLES,
    Flows,
    operator_config,
    running_flows,
)

from bot.catalog import load_catalog
from bot.iamref import IamReference
from bot.policy import compile_policy

CHAT = "Edit chat transcripts"
PROFILES = "Edit customer profiles"
PROFILES_ID = "customer-profiles/edit-customer-profiles"


def within_slack_limits(view: dict[str, Any]) -> None:
    assert view["type"] == "modal" and view["callback_id"] == "permissions_modal"
    assert len(view["title"]["text"]) <= 24
    assert len(view["blocks"]) <= 100
    for block in view["blocks"]:
        texts = [block.get("text", {}).get("text", "")]
        texts += [e.get("text", "") for e in block.get("elements", []) if isinstance(e, dict)]
        assert all(len(t) <= 3000 for t in texts), block


def modal_text(view: dict[str, Any]) -> str:
    return json.dumps(view["blocks"])


def compiled_actions(entry_id: str, principal: str, hours: int) -> list[str]:
    compiled = compile_policy(
        load_catalog(), entry_id, principal, grant_id="check", iam=IamReference(),
        start=datetime.now(UTC), duration=timedelta(hours=hours), max_duration=None,
        instance_arn=INSTANCE_ARN,
    )
    return sorted({a for p in compiled.policies for s in p.document["Statement"]
                   for a in s["Action"]})


def test_see_permissions_from_the_entry_card(flows: Flows) -> None:
    card = flows.command(ALICE, CHAT)
    before = len(flows.fake.calls("views.open"))
    flows.driver.click_response(ALICE, card, "see_permissions",
                                "entry:data-storage/edit-chat-transcripts")
    view = flows.driver.wait_for_opened_view(before + 1)
    within_slack_limits(view)
    shown = modal_text(view)
    principal = f"arn:aws:iam::{ACCOUNT}:role/{ROLES[ALICE]}"
    actions = compiled_actions("data-storage/edit-chat-transcripts", principal, hours=1)
    assert actions and all(f"`{a}`" in shown for a in actions), [
        a for a in actions if f"`{a}`" not in shown]
    # Resources and conditions as the policy holds them, and who gets it.
    assert INSTANCE_ARN in shown and principal in shown
    assert "connect:StorageResourceType = CHAT_TRANSCRIPTS" in shown
    assert "kms:GrantIsForAWSResource = true" in shown
    assert "arn:aws:s3:::amazon-connect-*" in shown
    assert "aws:CurrentTime" in shown


def test_see_permissions_from_the_request_modal_is_pushed(flows: Flows) -> None:
    _, modal = flows.driver.open_request_modal(ALICE, CHAT)
    opened = len(flows.fake.calls("views.open"))
    result = flows.client.click(ALICE, "see_permissions", blocks=modal["blocks"], view=modal)
    assert result.status == 200
    (push,) = flows.fake.wait_for_calls("views.push", 1)
    assert push.response["ok"], push.response
    view = push.response["view"]
    within_slack_limits(view)
    assert "connect:UpdateInstanceStorageConfig" in modal_text(view)
    assert len(flows.fake.calls("views.open")) == opened  # pushed, not opened


def test_approval_message_states_warnings_history_and_opens_the_exact_grant(flows: Flows) -> None:
    # Alice already holds one grant, and asked for customer profiles before.
    first = flows.request(ALICE)
    flows.click(BOB, first, "approve_request")
    flows.driver.wait_for_dm(ALICE, "is active until")
    earlier = flows.request(ALICE, PROFILES)
    flows.command(ALICE, "cancel 2")

    message = flows.request(ALICE, PROFILES, reason="Import customer data for INC-77")
    shown = flows.shown(message)
    # The warnings, stated in the message itself.
    assert "can leave behind after it ends" in shown and "s3:PutBucketPolicy" in shown
    assert "iam:CreateRole" in shown
    # The requester's other active grant and recent request for the same entry.
    assert "#1 Update Amazon Polly option (active" in shown
    assert "#2 cancelled" in shown
    assert earlier.ts != message.ts

    # Before approval: the modal shows the request's principal, instance and actions.
    before = len(flows.fake.calls("views.open"))
    flows.click(CAROL, message, "see_permissions", "request:3")
    view = flows.driver.wait_for_opened_view(before + 1)
    within_slack_limits(view)
    principal = f"arn:aws:iam::{ACCOUNT}:role/{ROLES[ALICE]}"
    actions = compiled_actions(PROFILES_ID, principal, hours=1)
    missing = [a for a in actions if f"`{a}`" not in modal_text(view)]
    assert not missing, missing
    assert "request #3" in modal_text(view) and "s3:PutBucketPolicy" in modal_text(view)

    # After approval: every action of the policy IAM holds, and its window.
    flows.click(CAROL, message, "approve_request")
    flows.click(CISO, message, "approve_request")
    flows.driver.wait_for_dm(ALICE, "is active until", count=2)
    (grant,) = flows.grants(3)
    attached = {name: doc for name, doc in flows.inline_policies().items()
                if name in grant.policy_names}
    assert attached, "the grant's policy is in IAM"
    before = len(flows.fake.calls("views.open"))
    flows.click(CAROL, flows.message_now(message), "see_permissions", "request:3")
    view = flows.driver.wait_for_opened_view(before + 1)
    shown = modal_text(view)
    in_iam = {a for doc in attached.values() for s in doc["Statement"] for a in s["Action"]}
    assert in_iam and all(f"`{a}`" in shown for a in in_iam)
    bounds = {s["Condition"]["DateLessThan"]["aws:CurrentTime"]
              for doc in attached.values() for s in doc["Statement"]}
    assert all(f"`{b}`" in shown for b in bounds)
    resources = {r for doc in attached.values() for s in doc["Statement"]
                 for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])}
    assert all(r in shown for r in resources)


def test_federation_approval_says_the_session_outlasts_the_window(flows: Flows) -> None:
    message = flows.request(ALICE, "Admin emergency federation")
    shown = flows.shown(message)
    assert "connect:AdminGetEmergencyAccessToken" in shown
    assert "outlast the window" in shown


STAGING_ARN = f"arn:aws:connect:us-west-2:{ACCOUNT}:instance/99999999-8888-7777-6666-555555555555"


def test_request_modal_preview_uses_the_instance_selected_in_the_modal(
    database_url: str, aws_env: str, tmp_path: Path,
) -> None:
    config = operator_config()
    config["instances"].append({"alias": "staging", "arn": STAGING_ARN})
    path = tmp_path / "two-instances.yaml"
    path.write_text(yaml.safe_dump(config))
    with running_flows(database_url, aws_env, path) as flows:
        _, modal = flows.driver.open_request_modal(ALICE, CHAT)

        # Nothing chosen yet: the first configured instance, and the modal says so.
        flows.client.click(ALICE, "see_permissions", blocks=modal["blocks"], view=modal)
        (push,) = flows.fake.wait_for_calls("views.push", 1)
        shown = modal_text(push.response["view"])
        assert INSTANCE_ARN in shown and STAGING_ARN not in shown
        assert "first configured instance because none is chosen yet" in shown

        # "staging" chosen in the still-open modal: Slack sends the view's state values.
        (option,) = [o for b in modal["blocks"] if b.get("block_id") == "instance"
                     for o in b["element"]["options"] if o["value"] == "staging"]
        chosen = {**modal, "state": {"values": {"instance": {"value": {
            "type": "static_select", "selected_option": option}}}}}
        flows.client.click(ALICE, "see_permissions", blocks=modal["blocks"], view=chosen)
        push = flows.fake.wait_for_calls("views.push", 2)[1]
        assert push.response["ok"], push.response
        view = push.response["view"]
        within_slack_limits(view)
        shown = modal_text(view)
        assert "instance `staging`" in shown and STAGING_ARN in shown
        assert INSTANCE_ARN not in shown and "none is chosen yet" not in shown
        principal = f"arn:aws:iam::{ACCOUNT}:role/{ROLES[ALICE]}"
        compiled = compile_policy(
            load_catalog(), "data-storage/edit-chat-transcripts", principal,
            grant_id="check", iam=IamReference(), start=datetime.now(UTC),
            duration=timedelta(hours=1), max_duration=None, instance_arn=STAGING_ARN)
        resources = {r for p in compiled.policies for s in p.document["Statement"]
                     for r in (s["Resource"] if isinstance(s["Resource"], list)
                               else [s["Resource"]])}
        assert STAGING_ARN in resources and all(r in shown for r in resources)

        # An alias that is not configured (a forged payload) is told, not a traceback.
        forged = {**modal, "state": {"values": {"instance": {"value": {
            "type": "static_select",
            "selected_option": {"text": option["text"], "value": "nope"}}}}}}
        result = flows.client.click(ALICE, "see_permissions", blocks=modal["blocks"],
                                    view=forged)
        assert result.status == 200
        told = flows.driver.wait_for_dm(ALICE, "There is no instance 'nope'")
        assert "configured: prod, staging" in told.text
        assert len(flows.fake.calls("views.push")) == 2


def test_the_preview_shows_the_configured_directory(
    database_url: str, aws_env: str, tmp_path: Path,
) -> None:
    config = operator_config()
    config["instances"][0]["directory_id"] = "d-906700c1a2"
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump(config))
    with running_flows(database_url, aws_env, path) as flows:
        card = flows.command(ALICE, "Delete instance")
        before = len(flows.fake.calls("views.open"))
        flows.driver.click_response(ALICE, card, "see_permissions", "entry:home/delete-instance")
        shown = modal_text(flows.driver.wait_for_opened_view(before + 1))
        assert "`ds:DeleteDirectory`" in shown
        assert f"arn:aws:ds:us-east-1:{ACCOUNT}:directory/d-906700c1a2" in shown
        assert f"arn:aws:ds:us-east-1:{ACCOUNT}:directory/*" not in shown
