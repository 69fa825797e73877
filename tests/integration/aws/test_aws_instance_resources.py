"""Grant-time look-ups on moto: the chosen instance's own service-linked role narrows a
grant's IAM writes to that one role, and a principal carrying AmazonConnectReadOnlyAccess
(which explicitly denies connect:AdminGetEmergencyAccessToken) is told the emergency
federation grant would do nothing instead of receiving it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_testkit import HOME_ACCOUNT, REGION, TRUST, SleepRecorder

from bot.aws.granter import IamGranter
from bot.aws.instance_resources import AttachedPolicyLookup, ConnectInstanceLookup
from bot.aws.sessions import AwsSessions
from bot.catalog import Catalog
from bot.config import parse_config
from bot.db import SessionFactory
from bot.fakes import (
    FakeClock,
    RecordingNotifier,
    StaticApproverDirectory,
    StaticPrincipalDirectory,
)
from bot.iamref import IamReference
from bot.lifecycle import RequestService
from bot.target_policy import target_plan_builder

READONLY = "arn:aws:iam::aws:policy/AmazonConnectReadOnlyAccess"
ALICE_ROLE = f"arn:aws:iam::{HOME_ACCOUNT}:role/alice-admin"


@pytest.fixture(autouse=True)
def _aws_managed_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto knows AWS managed policies (AmazonConnectReadOnlyAccess) only when asked."""
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")


@pytest.fixture
def aws(sessions: AwsSessions) -> AwsSessions:
    return sessions


@pytest.fixture
def instance_arn(aws: AwsSessions) -> str:
    connect = aws.client("connect")
    created = connect.create_instance(IdentityManagementType="CONNECT_MANAGED",
                                      InstanceAlias="prod", InboundCallsEnabled=True,
                                      OutboundCallsEnabled=True)
    return str(created["Arn"])


def test_the_lookup_reads_the_instance_role_and_caches_it(aws: AwsSessions,
                                                         instance_arn: str) -> None:
    now = [0.0]
    lookup = ConnectInstanceLookup(aws, max_age=60, clock=lambda: now[0])
    found = lookup(instance_arn)
    assert found is not None and found.instance_arn == instance_arn
    described = aws.client("connect").describe_instance(
        InstanceId=instance_arn.rsplit("/", 1)[-1])["Instance"]
    assert found.service_role_arn == described["ServiceRole"]
    assert lookup(instance_arn) is found  # cached within max_age
    missing = f"arn:aws:connect:{REGION}:{HOME_ACCOUNT}:instance/00000000-0000-0000-0000-000000000000"
    assert lookup(missing) is None  # no such instance: the account-and-Region scope stays


def test_attached_policies_of_roles_users_and_their_groups(aws: AwsSessions) -> None:
    iam = aws.iam()
    iam.create_role(RoleName="ro-role", AssumeRolePolicyDocument=TRUST)
    iam.attach_role_policy(RoleName="ro-role", PolicyArn=READONLY)
    iam.create_user(UserName="dave")
    iam.create_group(GroupName="readers")
    iam.attach_group_policy(GroupName="readers", PolicyArn=READONLY)
    iam.add_user_to_group(GroupName="readers", UserName="dave")
    lookup = AttachedPolicyLookup(aws.iam_for_principal)
    assert READONLY in lookup(f"arn:aws:iam::{HOME_ACCOUNT}:role/ro-role")
    assert READONLY in lookup(f"arn:aws:iam::{HOME_ACCOUNT}:user/dave")
    assert lookup(f"arn:aws:iam::{HOME_ACCOUNT}:group/readers") == (READONLY,)


def _service(aws: AwsSessions, instance_arn: str, session_factory: SessionFactory,
             catalog: Catalog) -> tuple[RequestService, RecordingNotifier]:
    tier = {"channel": "C0APPROVALS", "approvers": ["S0LEADS"], "approvals": 1}
    config = parse_config({
        "instances": [{"alias": "prod", "arn": instance_arn}],
        "principals": {"U0ALICE": ALICE_ROLE},
        "routing": {"tiers": {"read": tier, "write": tier, "critical": tier}},
    }, "test")
    notifier = RecordingNotifier()
    sleeps = SleepRecorder()
    service = RequestService(
        sessions=session_factory, catalog=catalog, config=config,
        granter=IamGranter(aws.iam_for_principal, attempts=3, base_delay=0.01, sleep=sleeps),
        notifier=notifier, approvers=StaticApproverDirectory({"S0LEADS": ("U0LEAD01",)}),
        principals=StaticPrincipalDirectory(config.principals),
        clock=FakeClock(datetime.now(UTC)),
        plan_builder=target_plan_builder(
            catalog, IamReference(),
            instance_resources_for=ConnectInstanceLookup(aws, config.instances),
            attached_policies=AttachedPolicyLookup(aws.iam_for_principal)),
        sleep=sleeps,
    )
    return service, notifier


def _grant(service: RequestService, entry_id: str) -> Any:
    request = service.submit(requester="U0ALICE", entry_id=entry_id, reason="incident INC-9",
                             duration=timedelta(minutes=30))
    service.approve(request.id, "U0LEAD01")
    return service.get(request.id)


def test_a_readonly_principal_is_told_emergency_federation_would_do_nothing(
    aws: AwsSessions, instance_arn: str, session_factory: SessionFactory, catalog: Catalog,
) -> None:
    iam = aws.iam()
    iam.create_role(RoleName="alice-admin", AssumeRolePolicyDocument=TRUST)
    iam.attach_role_policy(RoleName="alice-admin", PolicyArn=READONLY)
    service, notifier = _service(aws, instance_arn, session_factory, catalog)
    request = _grant(service, "federations/admin-emergency-federation")
    assert request.state == "failed"
    assert iam.list_role_policies(RoleName="alice-admin")["PolicyNames"] == []
    (failed,) = [n for n in notifier.sent if n.event == "failed"]
    error = str(failed.detail.get("error"))
    assert "AmazonConnectReadOnlyAccess" in error and "would do nothing" in error
    assert "connect:AdminGetEmergencyAccessToken" in error
    # Entries the managed policy does not deny are granted as usual.
    assert _grant(service, "home/describe-instance").state == "active"


def test_service_linked_role_writes_reach_only_the_instance_own_role(
    aws: AwsSessions, instance_arn: str, session_factory: SessionFactory, catalog: Catalog,
) -> None:
    iam = aws.iam()
    iam.create_role(RoleName="alice-admin", AssumeRolePolicyDocument=TRUST)
    service, _ = _service(aws, instance_arn, session_factory, catalog)
    request = _grant(service, "data-storage/edit-chat-transcripts")
    assert request.state == "active"
    (name,) = iam.list_role_policies(RoleName="alice-admin")["PolicyNames"]
    document = iam.get_role_policy(RoleName="alice-admin", PolicyName=name)["PolicyDocument"]
    (slr,) = [s for s in document["Statement"] if s["Sid"] == "ServiceLinkedRolePolicies"]
    own = aws.client("connect").describe_instance(
        InstanceId=instance_arn.rsplit("/", 1)[-1])["Instance"]["ServiceRole"]
    assert slr["Resource"] == own and "*" not in slr["Resource"]


def test_the_configured_directory_reaches_the_grant_with_or_without_describe(
        aws: AwsSessions, instance_arn: str) -> None:
    missing = f"arn:aws:connect:{REGION}:{HOME_ACCOUNT}:instance/00000000-0000-0000-0000-000000000000"
    lookup = ConnectInstanceLookup(aws, directory_ids={instance_arn: "d-906700c1a2",
                                                       missing: "d-0123456789"})
    found = lookup(instance_arn)
    assert found is not None and found.directory_id == "d-906700c1a2"
    assert found.service_role_arn  # DescribeInstance answered too
    # DescribeInstance fails (here: no such instance): the configured directory still pins.
    unknown = lookup(missing)
    assert unknown is not None and unknown.directory_id == "d-0123456789"
    assert unknown.service_role_arn is None
