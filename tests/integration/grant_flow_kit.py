"""The request lifecycle on a real database driving the real IAM granter on moto, as the
grant-flow and reconcile tests use it: their operator config, and Flow, the means to act
and to look at everything it touched (the `flow` fixture in conftest.py builds one)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aws_testkit import HOME_ACCOUNT, REGION, SleepRecorder
from doubles import FakeClock, RecordingNotifier
from sqlalchemy import select

from bot.audit import verify_chain
from bot.aws.granter import IamGranter
from bot.db import SessionFactory
from bot.lifecycle import RequestService
from bot.models import AccessRequest, AuditEvent, Grant

INSTANCE_ARN = (
    f"arn:aws:connect:{REGION}:{HOME_ACCOUNT}:instance/11111111-2222-3333-4444-555555555555"
)
ALICE_ROLE = f"arn:aws:iam::{HOME_ACCOUNT}:role/alice-admin"
CAROL_USER = f"arn:aws:iam::{HOME_ACCOUNT}:user/carol"
READ_ENTRY = "home/describe-instance"  # one inline policy
# Too big for a user's 2,048-character inline quota: the compiler makes a managed policy.
MANAGED_ENTRY = "contact-lens-connectors/add-update-remove-contact-lens-connectors"
LEADS = ("U0LEAD01", "U0LEAD02")
ATTEMPTS = 3  # the granter's consistency retries (IAM's "being modified" conflicts)


def operator_config_data() -> dict[str, Any]:
    tier = {"channel": "C0APPROVALS", "approvers": ["S0LEADS"], "approvals": 1}
    return {
        "instances": [{"alias": "prod", "arn": INSTANCE_ARN}],
        "principals": {"U0ALICE": ALICE_ROLE, "U0CAROL": CAROL_USER},
        "routing": {"tiers": {"read": tier, "write": tier, "critical": tier}},
        "timings": {"irrevocable_retry": "15m"},
    }


@dataclass
class Flow:
    service: RequestService
    sessions: SessionFactory
    iam: Any  # the very client the granter uses, so hooks on it reach the granter
    granter: IamGranter
    clock: FakeClock
    notifier: RecordingNotifier
    sleeps: SleepRecorder

    def inject(self, operation: str, hook: Any, stage: str = "before-call") -> None:
        self.iam.meta.events.register(f"{stage}.iam.{operation}", hook)

    def heal(self, operation: str, hook: Any, stage: str = "before-call") -> None:
        self.iam.meta.events.unregister(f"{stage}.iam.{operation}", hook)

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
