"""The three kinds of grant target on moto, through the real lifecycle, policy compiler
and granters on a real database (SQLite and PostgreSQL):

- an IAM Identity Center user gets a permission set of its own holding the time-boxed
  policy, assigned on the instance's account; "I'm done", expiry and reconcile each remove
  the assignment and the set; an assignment that fails leaves nothing behind;
- a shared role narrowed to one person's session carries the aws:userid condition, in
  the compiled policy and as IAM holds it;
- self-approval is refused by principal, group targets are gated and counted, and
  extensions stop at the tier's total limit.

Faults are injected with botocore event hooks on the granters' own clients.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_testkit import HOME_ACCOUNT, REGION, TRUST, SleepRecorder, _FakeHttp
from doubles import FakeClock, RecordingNotifier, StaticApproverDirectory
from grant_flow_kit import INSTANCE_ARN, LEADS, READ_ENTRY
from sqlalchemy import select

from bot.audit import verify_chain
from bot.aws.identity_center import IdentityCenterGranter
from bot.aws.principals import IamPrincipalDirectory
from bot.aws.reconcile import reconcile
from bot.aws.sessions import AwsSessions
from bot.aws.target_granter import TargetGranter
from bot.catalog import Catalog
from bot.config import parse_config
from bot.db import SessionFactory
from bot.iamref import IamReference
from bot.lifecycle import InvalidRequest, NotAllowed, RequestService, SelfApproval
from bot.models import AccessRequest, AuditEvent, Grant
from bot.reconcile_store import DbReconcileStore
from bot.target_policy import target_plan_builder
from bot.targets import is_session_scoped

SHARED_ROLE = f"arn:aws:iam::{HOME_ACCOUNT}:role/ConnectAdmins"
ADMINS_GROUP = f"arn:aws:iam::{HOME_ACCOUNT}:group/contact-center-admins"
DAVE_ROLE = f"arn:aws:iam::{HOME_ACCOUNT}:role/dave-admin"


def config_data(sso_instance: str, store_id: str) -> dict[str, Any]:
    tier = {"channel": "C0APPROVALS", "approvers": ["S0LEADS"], "approvals": 1}
    return {
        "instances": [{"alias": "prod", "arn": INSTANCE_ARN}],
        "identity_center": {"instance_arn": sso_instance, "identity_store_id": store_id},
        "allow_group_targets": True,
        "principals": {
            "U0ALICE": {"identity_center_user": "alice@example.com"},
            "U0BOB": {"role": SHARED_ROLE, "session_name": "bob@example.com"},
            "U0ERIN": {"role": SHARED_ROLE, "session_name": "erin@example.com"},
            "U0GRACE": ADMINS_GROUP,
            "U0DAVE": DAVE_ROLE,
        },
        "routing": {"tiers": {
            "read": {**tier, "max_duration": "2h", "max_total_duration": "5h"},
            "write": tier, "critical": tier}},
    }


@dataclass
class Targets:
    service: RequestService
    sessions: SessionFactory
    iam: Any
    sso: Any
    ids: Any
    granter: TargetGranter
    clock: FakeClock
    notifier: RecordingNotifier
    alice_id: str
    sso_instance: str
    store_id: str

    def submit(self, requester: str, entry: str = READ_ENTRY,
               duration: timedelta = timedelta(hours=1)) -> int:
        return self.service.submit(requester=requester, entry_id=entry,
                                   reason="incident INC-42", duration=duration).id

    def grant_of(self, request_id: int) -> Grant:
        with self.sessions() as session:
            return session.execute(
                select(Grant).where(Grant.request_id == request_id)).scalar_one()

    def state(self, request_id: int) -> str:
        with self.sessions() as session:
            return session.get_one(AccessRequest, request_id).state

    def permission_sets(self) -> dict[str, str]:
        """name -> ARN of every permission set in the instance."""
        arns = self.sso.list_permission_sets(InstanceArn=self.sso_instance)["PermissionSets"]
        return {self.sso.describe_permission_set(
            InstanceArn=self.sso_instance, PermissionSetArn=arn)["PermissionSet"]["Name"]: arn
            for arn in arns}

    def assignments(self, arn: str) -> list[tuple[str, str]]:
        got = self.sso.list_account_assignments(
            InstanceArn=self.sso_instance, AccountId=HOME_ACCOUNT, PermissionSetArn=arn)
        return [(a["PrincipalType"], a["PrincipalId"]) for a in got["AccountAssignments"]]

    def all_assignments(self) -> list[tuple[str, str]]:
        got = self.sso.list_account_assignments_for_principal(
            InstanceArn=self.sso_instance, PrincipalId=self.alice_id, PrincipalType="USER")
        return [(a["AccountId"], a["PermissionSetArn"]) for a in got["AccountAssignments"]]

    def role_policies(self) -> dict[str, Any]:
        names = self.iam.list_role_policies(RoleName="ConnectAdmins")["PolicyNames"]
        return {n: self.iam.get_role_policy(RoleName="ConnectAdmins",
                                            PolicyName=n)["PolicyDocument"] for n in names}

    def actions(self, request_id: int) -> list[str]:
        with self.sessions() as session:
            return list(session.execute(
                select(AuditEvent.action).where(AuditEvent.request_id == request_id)
                .order_by(AuditEvent.seq)).scalars())


@pytest.fixture
def targets(fake_aws: None, session_factory: SessionFactory, catalog: Catalog) -> Targets:
    aws = AwsSessions(REGION, max_attempts=1)
    iam, sso, ids = aws.iam(), aws.client("sso-admin"), aws.client("identitystore")
    iam.create_role(RoleName="ConnectAdmins", AssumeRolePolicyDocument=TRUST)
    iam.create_role(RoleName="dave-admin", AssumeRolePolicyDocument=TRUST)
    iam.create_group(GroupName="contact-center-admins")
    for name in ("gus", "hal"):
        iam.create_user(UserName=name)
        iam.add_user_to_group(GroupName="contact-center-admins", UserName=name)
    # moto provisions permission sets only on the instance it made itself.
    instance = sso.list_instances()["Instances"][0]
    sso_instance, store_id = instance["InstanceArn"], instance["IdentityStoreId"]
    alice = ids.create_user(IdentityStoreId=store_id, UserName="alice@example.com",
                            DisplayName="Alice", Name={"GivenName": "Alice",
                                                       "FamilyName": "Liddell"})
    sleeps = SleepRecorder()
    identity_center = IdentityCenterGranter(
        lambda: sso, lambda: ids, instance_arn=sso_instance, identity_store_id=store_id,
        attempts=3, base_delay=0.01, poll_interval=0.01, sleep=sleeps)
    granter = TargetGranter(aws.iam_for_principal, identity_center=identity_center,
                            attempts=3, base_delay=0.01, sleep=sleeps)
    config = parse_config(config_data(sso_instance, store_id), "test")
    clock = FakeClock(datetime.now(UTC))
    notifier = RecordingNotifier()
    service = RequestService(
        sessions=session_factory, catalog=catalog, config=config, granter=granter,
        notifier=notifier, approvers=StaticApproverDirectory({"S0LEADS": (*LEADS, "U0ERIN",
                                                                          "U0GRACE")}),
        principals=IamPrincipalDirectory(aws.iam_for_account, config.principals,
                                         allow_group_targets=True),
        clock=clock, max_revoke_attempts=3,
        plan_builder=target_plan_builder(catalog, IamReference(),
                                         role_unique_id=granter.role_unique_id),
    )
    return Targets(service, session_factory, iam, sso, ids, granter, clock, notifier,
                   alice["UserId"], sso_instance, store_id)


# -- Identity Center users ---------------------------------------------------------------


def test_an_identity_center_user_gets_a_permission_set_assigned_and_done_removes_it(
    targets: Targets,
) -> None:
    request_id = targets.submit("U0ALICE")
    targets.service.approve(request_id, "U0LEAD01")

    assert targets.state(request_id) == "active"
    grant = targets.grant_of(request_id)
    name = f"connect-access-{grant.id}"
    assert grant.kind == "permission_set" and grant.policy_names == [name]
    assert grant.account == HOME_ACCOUNT
    sets = targets.permission_sets()
    assert list(sets) == [name]
    described = targets.sso.describe_permission_set(
        InstanceArn=targets.sso_instance, PermissionSetArn=sets[name])["PermissionSet"]
    assert described["SessionDuration"] == "PT1H"  # no longer than the 1 h grant
    inline = json.loads(targets.sso.get_inline_policy_for_permission_set(
        InstanceArn=targets.sso_instance, PermissionSetArn=sets[name])["InlinePolicy"])
    for statement in inline["Statement"]:
        window = statement["Condition"]
        assert window["DateLessThan"]["aws:CurrentTime"] == (
            grant.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert "connect:DescribeInstance" in json.dumps(inline)
    assert targets.assignments(sets[name]) == [("USER", targets.alice_id)]
    granted = [n for n in targets.notifier.sent if n.event == "granted"][-1]
    assert granted.detail["access"]["permission_set"] == name
    assert granted.detail["access"]["account"] == HOME_ACCOUNT
    assert granted.detail["access"]["portal_url"] == f"https://{targets.store_id}.awsapps.com/start"

    outcome = targets.service.revoke(request_id, "U0ALICE", "done")

    assert outcome.state == "revoked"
    assert targets.permission_sets() == {}
    assert targets.all_assignments() == []
    with targets.sessions() as session:
        assert verify_chain(session).ok


def test_expiry_removes_the_assignment_and_the_permission_set(targets: Targets) -> None:
    request_id = targets.submit("U0ALICE")
    targets.service.approve(request_id, "U0LEAD01")
    assert len(targets.permission_sets()) == 1

    targets.clock.advance(timedelta(hours=1, seconds=1))
    outcomes = targets.service.revoke_due_batch()

    assert [o.state for o in outcomes] == ["revoked"]
    assert targets.grant_of(request_id).revoke_reason == "expiry"
    assert targets.permission_sets() == {}
    assert targets.all_assignments() == []


def test_reconcile_removes_an_orphaned_permission_set_and_its_assignment(
    targets: Targets,
) -> None:
    request_id = targets.submit("U0ALICE")
    targets.service.approve(request_id, "U0LEAD01")
    grant = targets.grant_of(request_id)
    # The database loses track of the grant (as after a restore from an old backup).
    with targets.sessions.begin() as session:
        session.get_one(Grant, grant.id).state = "revoked"

    findings = reconcile(targets.granter, DbReconcileStore(targets.service),
                         now=targets.clock.now())

    assert [(f.kind, f.policy_kind, f.policy_name) for f in findings] == [
        ("orphan", "permission_set", f"connect-access-{grant.id}")]
    assert targets.permission_sets() == {}
    assert targets.all_assignments() == []


def test_reconcile_restores_a_deleted_assignment_and_a_tampered_policy(
    targets: Targets,
) -> None:
    request_id = targets.submit("U0ALICE")
    targets.service.approve(request_id, "U0LEAD01")
    name = f"connect-access-{targets.grant_of(request_id).id}"
    arn = targets.permission_sets()[name]
    targets.sso.delete_account_assignment(
        InstanceArn=targets.sso_instance, TargetId=HOME_ACCOUNT, TargetType="AWS_ACCOUNT",
        PermissionSetArn=arn, PrincipalType="USER", PrincipalId=targets.alice_id)

    first = reconcile(targets.granter, DbReconcileStore(targets.service),
                      now=targets.clock.now())
    assert [f.kind for f in first] == ["missing"]
    assert targets.assignments(arn) == [("USER", targets.alice_id)]

    targets.sso.put_inline_policy_to_permission_set(
        InstanceArn=targets.sso_instance, PermissionSetArn=arn, InlinePolicy=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    second = reconcile(targets.granter, DbReconcileStore(targets.service),
                       now=targets.clock.now())
    assert [f.kind for f in second] == ["tampered"]
    held = json.loads(targets.sso.get_inline_policy_for_permission_set(
        InstanceArn=targets.sso_instance, PermissionSetArn=arn)["InlinePolicy"])
    assert '"*"' not in json.dumps(held["Statement"][0]["Action"])
    third = reconcile(targets.granter, DbReconcileStore(targets.service),
                      now=targets.clock.now())
    assert [f.kind for f in third] == ["ok"]


def test_reconcile_reports_identity_center_unread_and_changes_nothing_there(
    targets: Targets,
) -> None:
    request_id = targets.submit("U0ALICE")
    targets.service.approve(request_id, "U0LEAD01")
    name = f"connect-access-{targets.grant_of(request_id).id}"

    def denied(**_: Any) -> tuple[Any, dict[str, Any]]:
        return _FakeHttp(400), {"Error": {"Code": "AccessDeniedException",
                                          "Message": "not allowed"}}

    targets.sso.meta.events.register("before-call.sso-admin.ListPermissionSets", denied)
    findings = reconcile(targets.granter, DbReconcileStore(targets.service),
                         now=targets.clock.now())
    targets.sso.meta.events.unregister("before-call.sso-admin.ListPermissionSets", denied)

    (unchecked,) = [f for f in findings if f.policy_kind == "permission_set"]
    assert unchecked.kind == "unchecked" and "AccessDeniedException" in unchecked.error
    assert list(targets.permission_sets()) == [name]
    assert targets.state(request_id) == "active"


def test_an_assignment_that_fails_fails_the_grant_with_nothing_left(targets: Targets) -> None:
    # Identity Center answers the assignment asynchronously; here it reports FAILED
    # (moto itself always succeeds, and still records the assignment it was asked for).
    started: list[str] = []

    def in_progress(parsed: dict[str, Any], **_: Any) -> None:
        status = parsed["AccountAssignmentCreationStatus"]
        status["Status"] = "IN_PROGRESS"
        started.append(status["RequestId"])

    def failed(**_: Any) -> tuple[Any, dict[str, Any]]:
        return _FakeHttp(200), {"AccountAssignmentCreationStatus": {
            "Status": "FAILED", "RequestId": started[-1],
            "FailureReason": "Received a 404 status error: Not supported account"}}

    events = targets.sso.meta.events
    events.register("after-call.sso-admin.CreateAccountAssignment", in_progress)
    events.register("before-call.sso-admin.DescribeAccountAssignmentCreationStatus", failed)
    request_id = targets.submit("U0ALICE")

    targets.service.approve(request_id, "U0LEAD01")

    assert targets.state(request_id) == "failed"
    assert "Not supported account" in (targets.grant_of(request_id).last_error or "")
    assert targets.permission_sets() == {}
    assert targets.all_assignments() == []
    failure = [n for n in targets.notifier.sent if n.event == "failed"][-1]
    assert "Not supported account" in failure.detail["error"]


def test_an_unknown_identity_center_user_fails_before_anything_is_made(
    targets: Targets,
) -> None:
    targets.ids.delete_user(IdentityStoreId=targets.store_id, UserId=targets.alice_id)
    request_id = targets.submit("U0ALICE")

    targets.service.approve(request_id, "U0LEAD01")

    assert targets.state(request_id) == "failed"
    assert "no user 'alice@example.com'" in (targets.grant_of(request_id).last_error or "")
    assert targets.permission_sets() == {}


def test_a_request_from_a_user_missing_in_the_identity_store_is_refused_at_once(
    targets: Targets,
) -> None:
    assert targets.granter.identity_center is not None
    targets.service.principals = IamPrincipalDirectory(
        lambda account: targets.iam, targets.service.config.principals,
        identity_center_user=targets.granter.identity_center.user_id)
    targets.ids.delete_user(IdentityStoreId=targets.store_id, UserId=targets.alice_id)

    with pytest.raises(NotAllowed, match=r"Could not find you in IAM Identity Center: there "
                                         r"is no user 'alice@example\.com'"):
        targets.submit("U0ALICE")
    assert targets.permission_sets() == {}


def test_an_extension_updates_the_same_permission_set(targets: Targets) -> None:
    request_id = targets.submit("U0ALICE")
    targets.service.approve(request_id, "U0LEAD01")
    grant = targets.grant_of(request_id)

    targets.service.request_extension(request_id, "U0ALICE", timedelta(hours=2))
    targets.service.approve(request_id, "U0LEAD02")

    sets = targets.permission_sets()
    assert list(sets) == [f"connect-access-{grant.id}"]
    extended = targets.grant_of(request_id).expires_at
    inline = json.loads(targets.sso.get_inline_policy_for_permission_set(
        InstanceArn=targets.sso_instance, PermissionSetArn=sets[grant.policy_names[0]])["InlinePolicy"])
    assert inline["Statement"][0]["Condition"]["DateLessThan"]["aws:CurrentTime"] == (
        extended.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert targets.assignments(sets[grant.policy_names[0]]) == [("USER", targets.alice_id)]


# -- shared roles ------------------------------------------------------------------------


def test_a_shared_role_grant_holds_the_session_condition_on_every_statement(
    targets: Targets,
) -> None:
    role_id = targets.iam.get_role(RoleName="ConnectAdmins")["Role"]["RoleId"]
    bob = targets.submit("U0BOB")
    erin = targets.submit("U0ERIN")  # the same role and entry, another person: allowed
    targets.service.approve(bob, "U0LEAD01")
    targets.service.approve(erin, "U0LEAD01")

    held = targets.role_policies()
    bob_policy = held[f"connect-access-{targets.grant_of(bob).id}"]
    erin_policy = held[f"connect-access-{targets.grant_of(erin).id}"]
    assert is_session_scoped(bob_policy, role_id, "bob@example.com")
    assert is_session_scoped(erin_policy, role_id, "erin@example.com")
    for statement in bob_policy["Statement"]:
        assert statement["Condition"]["StringLike"] == {
            "aws:userid": f"{role_id}:bob@example.com"}
        assert "aws:CurrentTime" in json.dumps(statement["Condition"])

    # Bob is done: only his policy goes; reconcile leaves Erin's (same role) alone.
    targets.service.revoke(bob, "U0BOB", "done")
    assert list(targets.role_policies()) == [f"connect-access-{targets.grant_of(erin).id}"]
    findings = reconcile(targets.granter, DbReconcileStore(targets.service),
                         now=targets.clock.now())
    assert [f.kind for f in findings] == ["ok"]


# -- self-approval, groups, total limit ----------------------------------------------------


def test_distinct_principals_and_distinct_sessions_may_approve_each_other(
    targets: Targets,
) -> None:
    # Grace's group does not reach Dave's own role; Erin's session of the shared role
    # does not reach Bob's.
    dave = targets.submit("U0DAVE")
    targets.service.approve(dave, "U0GRACE")
    bob = targets.submit("U0BOB")
    targets.service.approve(bob, "U0ERIN")

    assert targets.state(dave) == targets.state(bob) == "active"


def test_a_vote_from_someone_whose_mapping_reaches_the_requester_is_refused(
    targets: Targets,
) -> None:
    # An approver mapped to the requester's group would approve access they hold too.
    data = config_data(targets.sso_instance, targets.store_id)
    config = parse_config(
        {**data, "principals": {**data["principals"], "U0LEAD02": ADMINS_GROUP}}, "test")
    targets.service.config = config
    targets.service.principals = IamPrincipalDirectory(
        AwsSessions(REGION, max_attempts=1).iam_for_account, config.principals,
        allow_group_targets=True)
    grace = targets.submit("U0GRACE")

    with pytest.raises(SelfApproval, match="reaches the access it grants"):
        targets.service.approve(grace, "U0LEAD02")
    assert targets.state(grace) == "pending"
    targets.service.approve(grace, "U0LEAD01")
    assert targets.state(grace) == "active"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_tag_lookup(targets: Targets, aws: AwsSessions, principals: dict[str, Any]
                    ) -> None:
    """The service's principal directory as production builds it with
    principal_tag_lookup on, over `aws` (moto, or an endpoint nobody answers)."""
    data = config_data(targets.sso_instance, targets.store_id)
    config = parse_config({**data, "principal_tag_lookup": True,
                           "principals": {**data["principals"], **principals}}, "test")
    targets.service.config = config
    targets.service.principals = IamPrincipalDirectory(
        aws.iam_for_account, config.principals, tag_lookup=True, allow_group_targets=True)


@pytest.mark.parametrize(("requester", "role"), [
    ("U0DAVE", "dave-admin"),  # the requester's own role
    ("U0BOB", "ConnectAdmins"),  # a shared role: the tag carries no session of its own
])
def test_an_approver_found_only_by_tag_on_the_requesters_role_is_refused(
    targets: Targets, requester: str, role: str,
) -> None:
    # U0LEAD02 has no config mapping; the tag lookup finds the requester's role for them.
    targets.iam.tag_role(RoleName=role, Tags=[
        {"Key": "connect-access:slack-user", "Value": "U0LEAD02"}])
    with_tag_lookup(targets, AwsSessions(REGION, max_attempts=1), {})
    request_id = targets.submit(requester)
    before = targets.actions(request_id)

    for vote in (targets.service.approve, targets.service.deny):
        with pytest.raises(SelfApproval, match=(
                rf"your own mapping \(.*{role}.*found by its connect-access:slack-user tag\)"
                r" reaches the access it grants")):
            vote(request_id, "U0LEAD02")
    assert targets.state(request_id) == "pending"
    assert targets.actions(request_id) == before  # no vote recorded
    # The tag moves away: the directory sees it gone (the index is rechecked), so the
    # same lead may now decide.
    targets.iam.untag_role(RoleName=role, TagKeys=["connect-access:slack-user"])
    targets.service.approve(request_id, "U0LEAD02")
    assert targets.state(request_id) == "active"


def test_an_approver_whose_lookup_fails_is_refused_unless_mapped_elsewhere(
    targets: Targets,
) -> None:
    # U0LEAD01 is mapped explicitly to a role of their own; U0LEAD02 is not mapped.
    targets.iam.create_role(RoleName="lead-one", AssumeRolePolicyDocument=TRUST)
    lead_one = {"U0LEAD01": f"arn:aws:iam::{HOME_ACCOUNT}:role/lead-one"}
    with_tag_lookup(targets, AwsSessions(REGION, max_attempts=1), lead_one)
    request_id = targets.submit("U0DAVE")
    # Then IAM stops answering the principal directory (a port nobody listens on); the
    # granter still reaches moto.
    unreachable = AwsSessions(REGION, f"http://127.0.0.1:{free_port()}", max_attempts=1,
                              connect_timeout=1.0, read_timeout=1.0)
    with_tag_lookup(targets, unreachable, lead_one)
    before = targets.actions(request_id)

    with pytest.raises(SelfApproval, match=(
            r"could not confirm that you are not the requester.*EndpointConnectionError")):
        targets.service.approve(request_id, "U0LEAD02")
    assert targets.state(request_id) == "pending"
    assert targets.actions(request_id) == before
    targets.service.approve(request_id, "U0LEAD01")
    assert targets.state(request_id) == "active"


def test_a_group_target_shows_how_many_users_it_reaches(targets: Targets) -> None:
    request_id = targets.submit("U0GRACE")

    submitted = next(n for n in targets.notifier.sent
                     if n.event == "submitted" and n.request_id == request_id)
    assert submitted.detail["target_kind"] == "iam"
    assert submitted.detail["group_members"] == 2


def test_extensions_stop_at_the_tiers_total_limit(targets: Targets) -> None:
    request_id = targets.submit("U0DAVE", duration=timedelta(hours=2))
    targets.service.approve(request_id, "U0LEAD01")
    targets.service.request_extension(request_id, "U0DAVE", timedelta(hours=2))
    targets.service.approve(request_id, "U0LEAD01")

    with pytest.raises(InvalidRequest, match=r"over the 5h a read-tier request may last in "
                                             r"total\. Request the access again"):
        targets.service.request_extension(request_id, "U0DAVE", timedelta(hours=2))
    targets.service.request_extension(request_id, "U0DAVE", timedelta(hours=1))
    assert "extension_requested" in targets.actions(request_id)[-1:]
