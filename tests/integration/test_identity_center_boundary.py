"""`required_permissions_boundary` holds for Identity Center users too: every permission
set the bot makes carries the boundary (by name and path, as Identity Center resolves it in
each account), it is read back before the set is provisioned, and a set whose boundary
cannot be put or reads back wrong is removed with nothing assigned.

moto 5.2 has no permissions-boundary calls for permission sets; `boundary_calls` adds them to
moto's own sso-admin responses, stored beside moto's permission sets, so the rest of the
flow (create, provision, assign, delete) is moto's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_testkit import REGION
from doubles import InMemoryReconcileStore
from moto.core.exceptions import JsonRESTError
from moto.ssoadmin.responses import SSOAdminResponse

from bot.aws.identity_center import IdentityCenterGranter, boundary_reference
from bot.aws.identity_center_reconcile import reconcile_permission_sets
from bot.aws.sessions import AwsSessions
from bot.config import parse_config
from bot.ports import GrantError, GrantPlan, PolicyDocument
from bot.reconcile_model import ExpectedGrant, Finding
from bot.runtime import make_granter

INSTANCE = "arn:aws:connect:us-east-1:123456789012:instance/11111111-2222-3333-4444-555555555555"
USER = "identity-center-user:alice@example.com"
BOUNDARY = "arn:aws:iam::*:policy/guardrails/connect-access-boundary"
POLICY_PATH = Path(__file__).parents[2] / "deploy" / "bot-iam-policy.json"


@pytest.fixture
def boundaries(fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Permission set ARN -> the PermissionsBoundary put on it, through moto's endpoint."""
    stored: dict[str, Any] = {}

    def put(self: SSOAdminResponse) -> str:
        stored[self._get_param("PermissionSetArn")] = self._get_param("PermissionsBoundary")
        return json.dumps({})

    def get(self: SSOAdminResponse) -> str:
        arn = self._get_param("PermissionSetArn")
        if arn not in stored:
            raise JsonRESTError("ResourceNotFoundException", "no permissions boundary")
        return json.dumps({"PermissionsBoundary": stored[arn]})

    monkeypatch.setattr(SSOAdminResponse, "put_permissions_boundary_to_permission_set", put,
                        raising=False)
    monkeypatch.setattr(SSOAdminResponse, "get_permissions_boundary_for_permission_set", get,
                        raising=False)
    yield stored


def plan(grant_id: str) -> GrantPlan:
    document = {"Version": "2012-10-17", "Statement": [{
        "Sid": "Connect", "Effect": "Allow", "Action": ["connect:DescribeInstance"],
        "Resource": INSTANCE}]}
    return GrantPlan(grant_id=grant_id, principal_arn=USER, kind="permission_set",
                     policies=(PolicyDocument(f"connect-access-{grant_id}", document),),
                     expires_at=datetime.now(UTC) + timedelta(hours=2), instance_arn=INSTANCE)


class Sso:
    def __init__(self) -> None:
        self.sso = boto3.client("sso-admin", region_name=REGION)
        self.ids = boto3.client("identitystore", region_name=REGION)
        found = self.sso.list_instances()["Instances"][0]
        self.instance, self.store = found["InstanceArn"], found["IdentityStoreId"]
        self.alice = self.ids.create_user(
            IdentityStoreId=self.store, UserName="alice@example.com", DisplayName="Alice",
            Name={"GivenName": "Alice", "FamilyName": "L"})["UserId"]

    def granter(self, boundary: str | None = BOUNDARY) -> IdentityCenterGranter:
        return IdentityCenterGranter(lambda: self.sso, lambda: self.ids,
                                     instance_arn=self.instance, identity_store_id=self.store,
                                     permissions_boundary=boundary, sleep=lambda _: None)

    def sets(self) -> list[str]:
        return list(self.sso.list_permission_sets(InstanceArn=self.instance)["PermissionSets"])

    def assigned(self) -> list[Any]:
        return list(self.sso.list_account_assignments_for_principal(
            InstanceArn=self.instance, PrincipalId=self.alice,
            PrincipalType="USER")["AccountAssignments"])


def test_boundary_reference_names_the_policy_by_name_and_path() -> None:
    assert boundary_reference(BOUNDARY) == {"CustomerManagedPolicyReference": {
        "Name": "connect-access-boundary", "Path": "/guardrails/"}}
    assert boundary_reference("arn:aws:iam::111122223333:policy/b") == {
        "CustomerManagedPolicyReference": {"Name": "b", "Path": "/"}}
    with pytest.raises(ValueError, match="not an IAM policy ARN"):
        boundary_reference("arn:aws:iam::111122223333:role/b")


def test_every_permission_set_carries_the_boundary_before_it_is_assigned(
        boundaries: dict[str, Any]) -> None:
    sso = Sso()
    order: list[str] = []
    sso.sso.meta.events.register("before-call.sso-admin.*", lambda event_name, **_: order.append(
        event_name.split(".")[-1]))
    attached = sso.granter().attach(plan("g1"))
    (arn,) = sso.sets()
    assert attached[0].arn == arn
    assert boundaries == {arn: boundary_reference(BOUNDARY)}
    assert [a["PermissionSetArn"] for a in sso.assigned()] == [arn]
    # Put and read back before the set becomes a role in any account.
    assert order.index("PutPermissionsBoundaryToPermissionSet") < order.index(
        "GetPermissionsBoundaryForPermissionSet") < order.index("ProvisionPermissionSet")
    # An extension re-attaches the same set: the boundary is put again, still the same.
    sso.granter().attach(plan("g1"))
    assert sso.sets() == [arn] and boundaries == {arn: boundary_reference(BOUNDARY)}


def test_a_boundary_that_reads_back_wrong_leaves_nothing(
        boundaries: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    sso = Sso()
    original_put = SSOAdminResponse.put_permissions_boundary_to_permission_set  # type: ignore[attr-defined]

    def put_other(self: SSOAdminResponse) -> str:
        original_put(self)
        boundaries[self._get_param("PermissionSetArn")] = {
            "CustomerManagedPolicyReference": {"Name": "something-else", "Path": "/"}}
        return json.dumps({})

    monkeypatch.setattr(SSOAdminResponse, "put_permissions_boundary_to_permission_set",
                        put_other)
    with pytest.raises(GrantError) as failed:
        sso.granter().attach(plan("g2"))
    assert failed.value.code == "ReadBackMismatch" and not failed.value.transient
    assert "permissions boundary" in str(failed.value)
    assert sso.sets() == [] and sso.assigned() == []


def test_a_boundary_aws_refuses_fails_the_grant_with_nothing_left(
        boundaries: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    sso = Sso()

    def refuse(self: SSOAdminResponse) -> str:
        raise JsonRESTError("ValidationException", "policy guardrails/x does not exist")

    monkeypatch.setattr(SSOAdminResponse, "put_permissions_boundary_to_permission_set", refuse)
    with pytest.raises(GrantError) as failed:
        sso.granter().attach(plan("g3"))
    assert "put the permissions boundary of connect-access-g3" in str(failed.value)
    assert sso.sets() == [] and sso.assigned() == [] and boundaries == {}


def test_without_the_setting_no_boundary_call_is_made(boundaries: dict[str, Any]) -> None:
    sso = Sso()
    called: list[str] = []
    sso.sso.meta.events.register("before-call.sso-admin.*", lambda event_name, **_: called.append(
        event_name.split(".")[-1]))
    sso.granter(boundary=None).attach(plan("g4"))
    assert not [c for c in called if "Boundary" in c] and boundaries == {}


def test_the_runtime_granter_applies_the_configs_boundary(boundaries: dict[str, Any]) -> None:
    sso = Sso()
    config = parse_config({
        "instances": [{"alias": "prod", "arn": INSTANCE}],
        "identity_center": {"instance_arn": sso.instance, "identity_store_id": sso.store},
        "required_permissions_boundary": BOUNDARY,
    })
    make_granter(AwsSessions(REGION, max_attempts=1), config).attach(plan("g5"))
    assert list(boundaries.values()) == [boundary_reference(BOUNDARY)]


def test_the_bots_policy_allows_the_boundary_calls() -> None:
    allowed: set[str] = set()
    for statement in json.loads(POLICY_PATH.read_text())["Statement"]:
        if statement["Effect"] == "Allow":
            actions = statement["Action"]
            allowed |= {actions} if isinstance(actions, str) else set(actions)
    assert {"sso:PutPermissionsBoundaryToPermissionSet",
            "sso:GetPermissionsBoundaryForPermissionSet"} <= allowed


@pytest.mark.parametrize("tamper", ["removed", "changed"])
def test_reconcile_puts_back_a_removed_or_changed_boundary(
        boundaries: dict[str, Any], tamper: str) -> None:
    sso = Sso()
    granter = sso.granter()
    grant = plan("g6")
    granter.attach(grant)
    (arn,) = sso.sets()
    if tamper == "removed":
        del boundaries[arn]
    else:
        boundaries[arn] = {"CustomerManagedPolicyReference": {"Name": "wide-open", "Path": "/"}}
    expected = ExpectedGrant(**vars(grant))
    store = InMemoryReconcileStore(grants=[expected])

    def run(dry_run: bool) -> list[Finding]:
        found: list[Finding] = []
        reconcile_permission_sets(granter, store, [expected], now=datetime.now(UTC),
                                  dry_run=dry_run, granting_grace=timedelta(minutes=5),
                                  act=found.append)
        return found

    (finding,) = run(dry_run=True)
    assert (finding.kind, finding.applied) == ("tampered", False)
    assert "permissions boundary was removed or changed" in finding.action
    assert (arn in boundaries) == (tamper == "changed")  # a dry run changes nothing
    (finding,) = run(dry_run=False)
    assert (finding.kind, finding.applied, finding.error) == ("tampered", True, "")
    assert boundaries == {arn: boundary_reference(BOUNDARY)}
    assert [f.kind for f in run(dry_run=True)] == ["ok"]
