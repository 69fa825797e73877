"""Grant-time look-ups on moto: the chosen instance's own service-linked role narrows a
grant's IAM writes to that one role, and a principal carrying AmazonConnectReadOnlyAccess
(which explicitly denies connect:AdminGetEmergencyAccessToken) is told the emergency
federation grant would do nothing instead of receiving it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from aws_testkit import HOME_ACCOUNT, REGION, TRUST, SleepRecorder
from doubles import (
    FakeClock,
    RecordingNotifier,
    StaticApproverDirectory,
    StaticPrincipalDirectory,
)

from bot.aws.granter import IamGranter
from bot.aws.instance_resources import AttachedPolicyLookup, ConnectInstanceLookup
from bot.aws.sessions import AwsSessions
from bot.catalog import Catalog
from bot.config import parse_config
from bot.db import SessionFactory
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
                                                       missing: "d-0123456789"},
                                   replica_regions={missing: ["us-west-2"]})
    found = lookup(instance_arn)
    assert found is not None and found.directory_id == "d-906700c1a2"
    assert found.service_role_arn  # DescribeInstance answered too
    assert found.replica_regions == ()
    # DescribeInstance fails (here: no such instance): what is configured still pins.
    unknown = lookup(missing)
    assert unknown is not None and unknown.directory_id == "d-0123456789"
    assert unknown.replica_regions == ("us-west-2",)
    assert unknown.service_role_arn is None


# ListInstanceStorageConfigs is not implemented by moto: the adapter is tested against
# botocore's Stubber, which checks every request and response against the Connect model.
STUB_INSTANCE = f"arn:aws:connect:{REGION}:{HOME_ACCOUNT}:instance/11111111-2222-3333-4444-555555555555"
STUB_ID = STUB_INSTANCE.rsplit("/", 1)[-1]
SLR = (f"arn:aws:iam::{HOME_ACCOUNT}:role/aws-service-role/connect.amazonaws.com/"
       "AWSServiceRoleForAmazonConnect_Stub1")
KEY = "0a1b2c3d-aaaa-bbbb-cccc-111122223333"
VIDEO_KEY = "mrk-0123456789abcdef0123456789abcdef"


def _s3(bucket: str, key_arn: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"BucketName": bucket, "BucketPrefix": "connect"}
    if key_arn:
        config["EncryptionConfig"] = {"EncryptionType": "KMS", "KeyId": key_arn}
    return {"AssociationId": "a" * 64, "StorageType": "S3", "S3Config": config}


def _stubbed(storage: dict[str, list[list[dict[str, Any]]]],
             failing: str | None = None) -> tuple[Any, Any]:
    """A Connect client stubbed for one look-up: DescribeInstance, then each storage type
    in the adapter's order, with `storage[type]` as its pages."""
    from botocore.stub import Stubber

    from bot.aws.instance_resources import STORAGE_TYPES

    client = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x").client(
        "connect", region_name=REGION)
    stubber = Stubber(client)
    stubber.add_response("describe_instance", {"Instance": {
        "Id": STUB_ID, "Arn": STUB_INSTANCE, "ServiceRole": SLR}}, {"InstanceId": STUB_ID})
    for resource_type in STORAGE_TYPES:
        if resource_type == failing:
            stubber.add_client_error("list_instance_storage_configs", "AccessDeniedException",
                                     http_status_code=403)
            break
        pages = storage.get(resource_type) or [[]]
        for number, page in enumerate(pages):
            expected: dict[str, Any] = {"InstanceId": STUB_ID, "ResourceType": resource_type}
            if number:
                expected["NextToken"] = f"page{number}"
            response: dict[str, Any] = {"StorageConfigs": page}
            if number + 1 < len(pages):
                response["NextToken"] = f"page{number + 1}"
            stubber.add_response("list_instance_storage_configs", response, expected)
    stubber.activate()
    return client, stubber


def test_storage_configs_give_buckets_keys_and_streams(aws: AwsSessions) -> None:
    key_arn = f"arn:aws:kms:{REGION}:{HOME_ACCOUNT}:key/{KEY}"
    client, stubber = _stubbed({
        # Two pages: the second is read too.
        "CALL_RECORDINGS": [[_s3("amazon-connect-rec", key_arn)], [_s3("corp-recordings")]],
        "MEDIA_STREAMS": [[{"AssociationId": "b" * 64, "StorageType": "KINESIS_VIDEO_STREAM",
                            "KinesisVideoStreamConfig": {
                                "Prefix": "connect-live", "RetentionPeriodHours": 24,
                                "EncryptionConfig": {
                                    "EncryptionType": "KMS",
                                    "KeyId": f"arn:aws:kms:{REGION}:{HOME_ACCOUNT}:key/{VIDEO_KEY}"}}}]],
        "AGENT_EVENTS": [[{"AssociationId": "c" * 64, "StorageType": "KINESIS_STREAM",
                           "KinesisStreamConfig": {
                               "StreamArn": f"arn:aws:kinesis:{REGION}:{HOME_ACCOUNT}:stream/agent-events"}}]],
        "CONTACT_TRACE_RECORDS": [[{"AssociationId": "d" * 64,
                                    "StorageType": "KINESIS_FIREHOSE",
                                    "KinesisFirehoseConfig": {
                                        "FirehoseArn": f"arn:aws:firehose:{REGION}:{HOME_ACCOUNT}:deliverystream/ctr"}}]],
    })
    found = ConnectInstanceLookup(aws, client_for=lambda arn: client)(STUB_INSTANCE)
    stubber.assert_no_pending_responses()
    assert found is not None and found.service_role_arn == SLR
    assert found.bucket_names == ("amazon-connect-rec", "corp-recordings")
    assert found.kms_key_ids == (KEY, VIDEO_KEY)
    assert found.kinesis_stream_names == ("agent-events",)
    assert found.firehose_stream_names == ("ctr",)


def test_a_key_outside_the_instance_or_a_failed_listing_leaves_the_scope(
        aws: AwsSessions) -> None:
    elsewhere = f"arn:aws:kms:eu-west-1:{HOME_ACCOUNT}:key/{KEY}"
    client, stubber = _stubbed({
        "CALL_RECORDINGS": [[_s3("amazon-connect-rec", elsewhere)]],
        "AGENT_EVENTS": [[{"AssociationId": "c" * 64, "StorageType": "KINESIS_STREAM",
                           "KinesisStreamConfig": {
                               "StreamArn": f"arn:aws:kinesis:{REGION}:{HOME_ACCOUNT}:stream/ae"}}]],
    })
    found = ConnectInstanceLookup(aws, client_for=lambda arn: client)(STUB_INSTANCE)
    stubber.assert_no_pending_responses()
    # The key is in another Region: keys are not narrowed; the rest still are.
    assert found is not None and found.kms_key_ids == ()
    assert found.bucket_names == ("amazon-connect-rec",)
    assert found.kinesis_stream_names == ("ae",)

    client, stubber = _stubbed({"CALL_RECORDINGS": [[_s3("amazon-connect-rec")]]},
                               failing="AGENT_EVENTS")
    found = ConnectInstanceLookup(aws, client_for=lambda arn: client)(STUB_INSTANCE)
    stubber.assert_no_pending_responses()
    # A listing denied part-way: nothing from the storage configs narrows the grant.
    assert found is not None and found.service_role_arn == SLR
    assert (found.bucket_names, found.kms_key_ids, found.kinesis_stream_names) == ((), (), ())
