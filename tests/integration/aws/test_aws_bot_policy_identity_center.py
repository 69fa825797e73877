"""deploy/bot-iam-policy.json allows every sso-admin and identitystore call the Identity
Center granter and its reconcile make: attach, an extension's re-attach, a failed attach's
roll-back, revoke and orphan removal, recorded at botocore's before-call on moto."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_testkit import REGION
from doubles import InMemoryReconcileStore

from bot.aws.identity_center import IdentityCenterGranter
from bot.aws.identity_center_reconcile import reconcile_permission_sets
from bot.ports import GrantError, GrantPlan, PolicyDocument

POLICY_PATH = Path(__file__).parents[3] / "deploy" / "bot-iam-policy.json"
INSTANCE = "arn:aws:connect:us-east-1:123456789012:instance/11111111-2222-3333-4444-555555555555"
USER = "identity-center-user:alice@example.com"


def allowed() -> set[str]:
    actions: set[str] = set()
    for statement in json.loads(POLICY_PATH.read_text())["Statement"]:
        if statement["Effect"] == "Allow":
            found = statement["Action"]
            actions |= {found} if isinstance(found, str) else set(found)
    return actions


def plan(grant_id: str, marker: str = "a") -> GrantPlan:
    document = {"Version": "2012-10-17", "Statement": [{
        "Sid": f"Connect{marker}", "Effect": "Allow", "Action": ["connect:DescribeInstance"],
        "Resource": INSTANCE}]}
    return GrantPlan(grant_id=grant_id, principal_arn=USER, kind="permission_set",
                     policies=(PolicyDocument(f"connect-access-{grant_id}", document),),
                     expires_at=datetime.now(UTC) + timedelta(hours=2), instance_arn=INSTANCE)


@pytest.mark.usefixtures("fake_aws")
def test_every_identity_center_call_the_bot_makes_is_allowed() -> None:
    sso = boto3.client("sso-admin", region_name=REGION)
    ids = boto3.client("identitystore", region_name=REGION)
    instance = sso.list_instances()["Instances"][0]
    ids.create_user(IdentityStoreId=instance["IdentityStoreId"], UserName="alice@example.com",
                    DisplayName="Alice", Name={"GivenName": "Alice", "FamilyName": "L"})
    called: set[str] = set()
    for client, prefix in ((sso, "sso"), (ids, "identitystore")):
        client.meta.events.register(
            "before-call", lambda event_name, prefix=prefix, **_: called.add(
                f"{prefix}:{event_name.split('.')[-1]}"))
    granter = IdentityCenterGranter(lambda: sso, lambda: ids,
                                    instance_arn=instance["InstanceArn"],
                                    identity_store_id=instance["IdentityStoreId"],
                                    sleep=lambda _: None)

    granter.attach(plan("g1"))
    granter.attach(plan("g1", "b"))  # an extension: the same set, updated
    granter.attach(plan("g2"))
    sso.meta.events.register("before-call.sso-admin.GetInlinePolicyForPermissionSet",
                             lambda **_: (_Http(), {"InlinePolicy": "{}"}))
    with pytest.raises(GrantError):  # reads back wrong: rolled back
        granter.attach(plan("g3"))
    sso.meta.events.unregister("before-call.sso-admin.GetInlinePolicyForPermissionSet")
    granter.revoke(USER, "permission_set", ["connect-access-g1"])
    reconcile_permission_sets(granter, InMemoryReconcileStore(), [], now=datetime.now(UTC),
                              dry_run=False, granting_grace=timedelta(minutes=5),
                              act=lambda finding: None)  # g2 is an orphan: removed

    assert sso.list_permission_sets(InstanceArn=instance["InstanceArn"])["PermissionSets"] == []
    needed = called - {"sso:ListInstances"}  # the test's own set-up call
    assert needed - allowed() == set()
    assert {"sso:CreateAccountAssignment", "sso:DeletePermissionSet",
            "identitystore:GetUserId"} <= needed


class _Http:
    status_code = 200
    headers: dict[str, str] = {}  # noqa: RUF012 - botocore reads it, never writes
    content = b""
    raw: Any = None
