"""The request lifecycle on a real database (SQLite and PostgreSQL) driving the real IAM
granter against moto, with the real policy compiler (bot.runtime.PolicyPlanBuilder, i.e.
bot.policy.compile_policy) building the documents.

Faults are injected with botocore event hooks on the granter's own IAM client, so
everything above the HTTP layer runs for real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.audit import verify_chain
from bot.aws.granter import IamGranter, document_hash
from bot.aws.reconcile import reconcile
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
from bot.lifecycle import RequestService
from bot.models import AccessRequest, AuditEvent, Grant
from bot.reconcile_store import DbReconcileStore
from bot.runtime import PolicyPlanBuilder

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
INSTANCE_ARN = f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/11111111-2222-3333-4444-555555555555"
ALICE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/alice-admin"
CAROL_USER = f"arn:aws:iam::{ACCOUNT}:user/carol"
READ_ENTRY = "home/describe-instance"  # one inline policy
# Too big for a user's 2,048-character inline quota: the compiler makes a managed policy.
MANAGED_ENTRY = "contact-lens-connectors/add-update-remove-contact-lens-connectors"
LEADS = ("U0LEAD01", "U0LEAD02")
ATTEMPTS = 3  # the granter's own retry loop


class ProcessKilled(BaseException):
    """Stands for the process dying: not an Exception, so no `except` in the bot runs."""


def operator_config_data() -> dict[str, Any]:
    tier = {"channel": "C0APPROVALS", "approvers": ["S0LEADS"], "approvals": 1}
    return {
        "instances": [{"alias": "prod", "arn": INSTANCE_ARN}],
        "principals": {"U0ALICE": ALICE_ROLE, "U0CAROL": CAROL_USER},
        "routing": {"tiers": {"read": tier, "write": tier, "critical": tier}},
        "timings": {"irrevocable_retry": "15m"},
    }


@dataclass
class Fault:
    """Answers an IAM operation with an AWS error `times` times (every time when None)."""

    code: str
    times: int | None = None
    calls: int = 0

    def __call__(self, **_: Any) -> tuple[Any, dict[str, Any]] | None:
        self.calls += 1
        if self.times is not None and self.calls > self.times:
            return None
        status = 500 if self.code == "ServiceFailure" else 400
        body = {"Error": {"Code": self.code, "Message": f"injected {self.code}"},
                "ResponseMetadata": {"HTTPStatusCode": status}}
        return _FakeHttp(status), body


class _FakeHttp:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}
        self.content = b""
        self.raw = None


@dataclass
class Sleeps:
    delays: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Flow:
    service: RequestService
    sessions: SessionFactory
    iam: Any  # the very client the granter uses, so hooks on it reach the granter
    granter: IamGranter
    clock: FakeClock
    notifier: RecordingNotifier
    sleeps: Sleeps

    def inject(self, operation: str, fault: Any, stage: str = "before-call") -> None:
        self.iam.meta.events.register(f"{stage}.iam.{operation}", fault)

    def heal(self, operation: str, fault: Any, stage: str = "before-call") -> None:
        self.iam.meta.events.unregister(f"{stage}.iam.{operation}", fault)

    def submit(self, requester: str = "U0ALICE", entry: str = READ_ENTRY) -> int:
        request = self.service.submit(requester=requester, entry_id=entry,
                                      reason="incident INC-42", duration=timedelta(hours=1))
        return request.id

    def grant_of(self, request_id: int) -> Grant:
        with self.sessions() as session:
            return session.execute(
                select(Grant).where(Grant.request_id == request_id)
            ).scalar_one()

    def request(self, request_id: int) -> AccessRequest:
        return self.service.get(request_id)

    def actions(self, request_id: int) -> list[str]:
        with self.sessions() as session:
            return list(session.execute(
                select(AuditEvent.action).where(AuditEvent.request_id == request_id)
                .order_by(AuditEvent.seq)
            ).scalars())

    def chain_ok(self) -> bool:
        with self.sessions() as session:
            return verify_chain(session).ok

    def inline(self, role: str = "alice-admin") -> dict[str, Any]:
        names = self.iam.list_role_policies(RoleName=role)["PolicyNames"]
        return {n: self.iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"]
                for n in names}

    def local_policies(self) -> list[str]:
        return sorted(p["PolicyName"] for p in self.iam.list_policies(Scope="Local")["Policies"])


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """moto in-process, with credentials no real account accepts and no profile or
    endpoint that could lead boto3 to one."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        yield


@pytest.fixture(scope="module")
def plan_builder(catalog: Catalog) -> PolicyPlanBuilder:
    return PolicyPlanBuilder(catalog)  # loads the IAM reference once per module


@pytest.fixture
def flow(fake_aws: None, session_factory: SessionFactory, catalog: Catalog,
         plan_builder: PolicyPlanBuilder) -> Flow:
    # botocore's own retries off: the granter's loop (with recorded, not real, sleeps) is
    # what gives up, and botocore would sleep for real between its attempts.
    aws = AwsSessions(REGION, max_attempts=1)
    iam = aws.iam()
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
    iam.create_role(RoleName="alice-admin", AssumeRolePolicyDocument=trust)
    iam.create_user(UserName="carol")
    sleeps = Sleeps()
    granter = IamGranter(aws.iam_for_principal, attempts=ATTEMPTS, base_delay=0.01,
                         sleep=sleeps)
    config = parse_config(operator_config_data(), "test")
    clock = FakeClock(datetime.now(UTC))
    notifier = RecordingNotifier()
    service = RequestService(
        sessions=session_factory, catalog=catalog, config=config, granter=granter,
        notifier=notifier, approvers=StaticApproverDirectory({"S0LEADS": LEADS}),
        principals=StaticPrincipalDirectory(config.principals), clock=clock,
        plan_builder=plan_builder, max_revoke_attempts=3,
    )
    return Flow(service, session_factory, iam, granter, clock, notifier, sleeps)


def test_approve_puts_the_time_boxed_policy_in_iam_and_done_removes_it(flow: Flow) -> None:
    request_id = flow.submit()

    flow.service.approve(request_id, "U0LEAD01")

    assert flow.request(request_id).state == "active"
    grant = flow.grant_of(request_id)
    assert grant.state == "active" and grant.kind == "inline"
    held = flow.inline()
    assert list(held) == grant.policy_names == [f"connect-access-{grant.id}"]
    document = held[grant.policy_names[0]]
    assert document_hash(document) == grant.document_hash
    for statement in document["Statement"]:
        window = statement["Condition"]
        assert window["DateLessThan"]["aws:CurrentTime"] == (
            grant.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
        assert window["DateGreaterThan"]["aws:CurrentTime"] == (
            grant.starts_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert "connect:DescribeInstance" in json.dumps(document)

    outcome = flow.service.revoke(request_id, "U0ALICE", "done")

    assert outcome.state == "revoked" and outcome.error is None
    assert flow.inline() == {}
    assert flow.request(request_id).state == "revoked"
    assert flow.grant_of(request_id).revoke_reason == "done"
    assert flow.actions(request_id) == [
        "submitted", "vote", "approved", "granting", "granted", "revoking", "revoked"]
    assert flow.notifier.events(request_id)[-2:] == ["granted", "revoked"]
    assert flow.chain_ok()


def test_a_managed_grant_is_created_attached_and_deleted(flow: Flow) -> None:
    request_id = flow.submit("U0CAROL", MANAGED_ENTRY)
    flow.service.approve(request_id, "U0LEAD01")

    grant = flow.grant_of(request_id)
    assert grant.state == "active" and grant.kind == "managed"
    attached = flow.iam.list_attached_user_policies(UserName="carol")["AttachedPolicies"]
    assert [p["PolicyName"] for p in attached] == grant.policy_names
    version = flow.iam.get_policy(PolicyArn=attached[0]["PolicyArn"])["Policy"]
    document = flow.iam.get_policy_version(
        PolicyArn=attached[0]["PolicyArn"], VersionId=version["DefaultVersionId"]
    )["PolicyVersion"]["Document"]
    assert document_hash(document) == grant.document_hash
    assert "aws:CurrentTime" in json.dumps(document)

    assert flow.service.revoke(request_id, "U0CAROL", "done").state == "revoked"
    assert flow.iam.list_attached_user_policies(UserName="carol")["AttachedPolicies"] == []
    assert flow.local_policies() == []
    assert flow.chain_ok()


@pytest.mark.parametrize(("code", "retried"), [("LimitExceeded", False), ("Throttling", True)])
def test_an_attach_that_fails_fails_the_request_with_nothing_left_in_iam(
    flow: Flow, code: str, retried: bool
) -> None:
    fault = Fault(code)
    flow.inject("PutRolePolicy", fault)
    request_id = flow.submit()

    flow.service.approve(request_id, "U0LEAD01")

    # A permanent fault is not retried; a transient one is, until the attempts run out.
    assert fault.calls == (ATTEMPTS if retried else 1)
    assert len(flow.sleeps.delays) == (ATTEMPTS - 1 if retried else 0)
    assert flow.request(request_id).state == "failed"
    grant = flow.grant_of(request_id)
    assert grant.state == "failed" and code in (grant.last_error or "")
    assert flow.inline() == {}
    failed = [n for n in flow.notifier.sent if n.event == "failed"]
    assert len(failed) == 1 and failed[0].request_id == request_id
    assert failed[0].detail["requester"] == "U0ALICE" and code in failed[0].detail["error"]
    assert flow.actions(request_id)[-2:] == ["granting", "grant_failed"]
    assert flow.chain_ok()


def test_a_revoke_that_keeps_failing_becomes_irrevocable_and_is_retried_until_it_works(
    flow: Flow,
) -> None:
    request_id = flow.submit()
    flow.service.approve(request_id, "U0LEAD01")
    grant_id = flow.grant_of(request_id).id
    fault = Fault("Throttling")
    flow.inject("DeleteRolePolicy", fault)

    first = flow.service.revoke(request_id, "U0ALICE", "done")
    assert first.state == "revoking" and "Throttling" in (first.error or "")
    # The lifecycle's own backoff between whole attempts: 30 s, then 60 s.
    states = []
    for wait in (timedelta(seconds=30), timedelta(seconds=60)):
        assert flow.service.due_for_revocation() == []
        flow.clock.advance(wait)
        outcome = flow.service.revoke_due(grant_id)
        states.append(outcome.state if outcome else None)

    assert states == ["revoking", "irrevocable"]
    assert fault.calls == 3 * ATTEMPTS  # three lifecycle attempts, each retried by the granter
    assert list(flow.inline()) == flow.grant_of(request_id).policy_names  # still there
    alerts = [n for n in flow.notifier.sent if n.event == "irrevocable"]
    assert len(alerts) == 1 and alerts[0].detail["attempts"] == 3
    assert "Throttling" in alerts[0].detail["error"]
    # Irrevocable grants are retried on the longer period (15 m here), not before.
    flow.clock.advance(timedelta(minutes=14))
    assert flow.service.due_for_revocation() == []

    flow.heal("DeleteRolePolicy", fault)
    flow.clock.advance(timedelta(minutes=1))
    outcomes = flow.service.revoke_all_due()

    assert [o.state for o in outcomes] == ["revoked"]
    assert flow.inline() == {}
    assert flow.request(request_id).state == "revoked"
    assert flow.actions(request_id)[5:] == [
        "revoking", "revoke_failed", "revoke_failed", "irrevocable", "revoked"]
    assert flow.notifier.events(request_id)[-2:] == ["irrevocable", "revoked"]
    assert flow.chain_ok()


def held_by_bot(flow: Flow) -> list[str]:
    """Every policy the bot may have made: inline on alice, or managed (attached to carol
    or to nothing)."""
    attached = flow.iam.list_attached_user_policies(UserName="carol")["AttachedPolicies"]
    return sorted({*flow.inline(), *(p["PolicyName"] for p in attached),
                   *flow.local_policies()})


# (requester, entry, IAM call, hook stage, did the grant's policy reach IAM)
CRASHES = [
    pytest.param("U0ALICE", READ_ENTRY, "PutRolePolicy", "after-call", True,
                 id="inline-after-put"),
    pytest.param("U0ALICE", READ_ENTRY, "PutRolePolicy", "before-call", False,
                 id="inline-before-put"),
    pytest.param("U0CAROL", MANAGED_ENTRY, "CreatePolicy", "after-call", True,
                 id="managed-created-not-attached"),
    pytest.param("U0CAROL", MANAGED_ENTRY, "AttachUserPolicy", "after-call", True,
                 id="managed-after-attach"),
]


@pytest.mark.parametrize(("requester", "entry", "operation", "stage", "reached"), CRASHES)
def test_a_crash_between_the_iam_call_and_the_commit_is_repaired_by_reconcile(
    flow: Flow, requester: str, entry: str, operation: str, stage: str, reached: bool
) -> None:
    """The design: a grant left in `granting` is never completed by reconcile, because its
    requester was never told it worked and nobody watches it expire. Reconcile removes what
    reached IAM and fails the grant; the requester is told to ask again."""

    def die(**_: Any) -> None:
        raise ProcessKilled

    flow.inject(operation, die, stage=stage)
    request_id = flow.submit(requester, entry)

    with pytest.raises(ProcessKilled):
        flow.service.approve(request_id, "U0LEAD01")

    flow.heal(operation, die, stage=stage)
    grant = flow.grant_of(request_id)
    assert grant.state == "granting"
    # IAM has it (or not), the database cannot know which.
    assert held_by_bot(flow) == (grant.policy_names if reached else [])
    store = DbReconcileStore(flow.service)

    # Within the grace period the attach may still be running: left alone.
    assert reconcile(flow.granter, store, now=flow.clock.now(), notifier=flow.notifier) == []
    assert held_by_bot(flow) == (grant.policy_names if reached else [])

    flow.clock.advance(timedelta(minutes=6))
    findings = reconcile(flow.granter, store, now=flow.clock.now(), notifier=flow.notifier)

    assert [(f.kind, f.policy_name, f.applied, f.error) for f in findings] == [
        ("stranded", grant.policy_names[0], True, "")]
    assert held_by_bot(flow) == []
    assert flow.request(request_id).state == "failed"
    settled = flow.grant_of(request_id)
    assert settled.state == "failed" and "stopped while attaching" in (settled.last_error or "")
    assert flow.actions(request_id)[-3:] == ["granting", "grant_failed", "reconcile_stranded"]
    assert flow.notifier.events(request_id)[-1] == "failed"
    assert [n.detail["finding"] for n in flow.notifier.sent
            if n.event == "reconcile_finding"] == ["stranded"]
    assert flow.chain_ok()
    # Nothing left to repair.
    assert reconcile(flow.granter, store, now=flow.clock.now()) == []
