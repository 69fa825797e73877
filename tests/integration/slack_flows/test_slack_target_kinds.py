"""Identity Center users and shared roles end to end through Slack: signed requests to
the web process's Bolt app, moto's HTTP server for IAM, sso-admin and identitystore, and
what FakeSlack recorded. The approval message and the DM say how the person reaches the
access; "I'm done" removes the permission set and its assignment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from slack_flows_harness import (
    ACCOUNT,
    ALICE,
    APPROVALS,
    BOB,
    REGION,
    Flows,
    operator_config,
    running_flows,
)

SHARED_ROLE = f"arn:aws:iam::{ACCOUNT}:role/ConnectAdmins"
DAVE = "U0DAVE"


def ic_clients(aws_env: str) -> tuple[Any, Any]:
    return (boto3.client("sso-admin", region_name=REGION, endpoint_url=aws_env),
            boto3.client("identitystore", region_name=REGION, endpoint_url=aws_env))


@pytest.fixture
def config_path(tmp_path: Path, aws_env: str) -> Path:
    """The flows config with Alice as an Identity Center user and Dave on a shared role."""
    sso, ids = ic_clients(aws_env)
    instance = sso.list_instances()["Instances"][0]
    ids.create_user(IdentityStoreId=instance["IdentityStoreId"],
                    UserName="alice@example.com", DisplayName="Alice",
                    Name={"GivenName": "Alice", "FamilyName": "Liddell"})
    iam = boto3.client("iam", region_name=REGION, endpoint_url=aws_env)
    iam.create_role(RoleName="ConnectAdmins", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
            "Action": "sts:AssumeRole"}]}))
    config = operator_config()
    config["identity_center"] = {"instance_arn": instance["InstanceArn"],
                                 "identity_store_id": instance["IdentityStoreId"]}
    config["principals"][ALICE] = {"identity_center_user": "alice@example.com"}
    config["principals"][DAVE] = {"role": SHARED_ROLE, "session_name": "dave@example.com"}
    path = tmp_path / "connect-access.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def permission_sets(aws_env: str) -> dict[str, str]:
    sso, _ = ic_clients(aws_env)
    instance = sso.list_instances()["Instances"][0]["InstanceArn"]
    arns = sso.list_permission_sets(InstanceArn=instance)["PermissionSets"]
    return {sso.describe_permission_set(InstanceArn=instance, PermissionSetArn=arn)
            ["PermissionSet"]["Name"]: arn for arn in arns}


def test_an_identity_center_grant_tells_the_person_where_to_find_it(
    flows: Flows, aws_env: str,
) -> None:
    sso, _ = ic_clients(aws_env)
    store = sso.list_instances()["Instances"][0]["IdentityStoreId"]
    message = flows.request(ALICE)
    assert message.channel == APPROVALS
    pending = flows.shown(message)
    assert "IAM Identity Center user alice@example.com" in pending
    assert f"https://{store}.awsapps.com/start|AWS access portal" in pending
    assert f"account `{ACCOUNT}`" in pending

    flows.click(BOB, message, "approve_request")
    dm = flows.driver.wait_for_dm(ALICE, "is active until")

    (grant,) = flows.grants(1)
    name = f"connect-access-{grant.id}"
    assert grant.kind == "permission_set" and list(permission_sets(aws_env)) == [name]
    shown = json.dumps(dm.blocks)
    assert (f"Sign in to the <https://{store}.awsapps.com/start|AWS access portal>, choose "
            f"account `{ACCOUNT}`, then permission set `{name}`.") in shown
    assert f"permission set `{name}`" in flows.wait_for_shown(message, "Granted")

    flows.click(ALICE, dm, "end_grant")
    flows.driver.wait_for_dm(ALICE, "has ended")
    assert permission_sets(aws_env) == {}
    assert flows.view(1).state == "revoked"


def test_a_shared_role_grant_names_the_session_that_gets_it(flows: Flows) -> None:
    message = flows.request(DAVE)
    shown = flows.shown(message)
    assert "role arn:aws:iam::123456789012:role/ConnectAdmins, session dave@example.com" in shown
    assert "Only sessions named `dave@example.com` of this role get it" in shown

    flows.click(BOB, message, "approve_request")
    flows.driver.wait_for_dm(DAVE, "is active until")
    role_id = flows.iam.get_role(RoleName="ConnectAdmins")["Role"]["RoleId"]
    (name,) = flows.iam.list_role_policies(RoleName="ConnectAdmins")["PolicyNames"]
    document = flows.iam.get_role_policy(RoleName="ConnectAdmins",
                                         PolicyName=name)["PolicyDocument"]
    assert {json.dumps(s["Condition"]["StringLike"]) for s in document["Statement"]} == {
        json.dumps({"aws:userid": f"{role_id}:dave@example.com"})}


def test_see_permissions_shows_a_shared_roles_session_condition(flows: Flows) -> None:
    card = flows.command(DAVE, "Edit chat transcripts")
    before = len(flows.fake.calls("views.open"))
    flows.driver.click_response(DAVE, card, "see_permissions",
                                "entry:data-storage/edit-chat-transcripts")
    shown = json.dumps(flows.driver.wait_for_opened_view(before + 1)["blocks"])

    role_id = flows.iam.get_role(RoleName="ConnectAdmins")["Role"]["RoleId"]
    assert f"aws:userid = {role_id}:dave@example.com" in shown
    assert "only sessions named dave@example.com" in shown


def test_an_approver_found_by_tag_on_the_requesters_role_cannot_approve_it(
    tmp_path: Path, database_url: str, aws_env: str,
) -> None:
    # Alice is mapped to alice-admin in the config; the same role carries
    # connect-access:slack-user=<a lead>, so principal_tag_lookup finds it for that lead.
    lead = "U0LEAD01"
    iam = boto3.client("iam", region_name=REGION, endpoint_url=aws_env)
    iam.tag_role(RoleName="alice-admin",
                 Tags=[{"Key": "connect-access:slack-user", "Value": lead}])
    config = operator_config()
    config["principal_tag_lookup"] = True
    path = tmp_path / "connect-access.yaml"
    path.write_text(yaml.safe_dump(config))

    with running_flows(database_url, aws_env, path) as flows:
        message = flows.request(ALICE)
        before = flows.counts()
        flows.click(lead, message, "approve_request")

        refusal = flows.wait_for_ephemerals(lead, 1)[0]
        assert "You cannot vote on this request" in refusal
        assert "alice-admin, found by its connect-access:slack-user tag" in refusal
        assert all(e.channel == APPROVALS for e in flows.fake.ephemerals(lead))
        assert flows.counts() == before  # no vote, no audit event, no grant
        assert flows.view(1).state == "pending"
        assert "approve_request" in flows.shown(message)
        assert flows.inline_policies(ALICE) == {}

        flows.click(BOB, message, "approve_request")  # a lead whose role is his own
        flows.driver.wait_for_dm(ALICE, "is active until")
        view = flows.view(1)
        assert view.state == "active" and [v.approver for v in view.votes] == [BOB]
