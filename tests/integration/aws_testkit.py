"""Helpers for the tests that run the IAM adapter on moto: the AWS adapter tests in aws/
and the lifecycle-on-IAM tests here (fixtures live in the conftest.py files)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ReadTimeoutError

from bot.aws.sessions import InstanceConfig
from bot.ports import GrantPlan, PolicyDocument, PolicyKind

REGION = "us-east-1"
HOME_ACCOUNT = "123456789012"  # moto's default account
OTHER_ACCOUNT = "222233334444"
OTHER_INSTANCE = InstanceConfig(
    arn=f"arn:aws:connect:{REGION}:{OTHER_ACCOUNT}:instance/11111111-2222-3333-4444-555555555555",
    assume_role_arn=f"arn:aws:iam::{OTHER_ACCOUNT}:role/connect-access-bot",
    external_id="ext-id-for-other",
    alias="other",
)
TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
)


class ProcessKilled(BaseException):
    """Stands for the process dying: not an Exception, so no `except` in the bot runs."""


@dataclass
class SleepRecorder:
    delays: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class MotoIamSeed:
    """Test data written straight into moto's in-process IAM (the backend a
    ThreadedMotoServer started in this process serves over HTTP): for accounts of hundreds
    of principals, which over HTTP cost about 12 ms of CPU a call (4 s per 340 roles). What
    the bot does with them still goes to the server over HTTP. Calls are made one at a
    time: moto's create_role is not safe against concurrent creates."""

    def __init__(self, account: str = HOME_ACCOUNT) -> None:
        from moto.iam.models import iam_backends  # only this seeding needs moto's internals

        self._iam = iam_backends[account]["global"]

    def role(self, name: str, tags: list[dict[str, str]] | None = None) -> None:
        self._iam.create_role(role_name=name, assume_role_policy_document=TRUST, path="/",
                              permissions_boundary=None, description="", tags=tags or [],
                              max_session_duration=None)

    def user(self, name: str, tags: list[dict[str, str]] | None = None) -> None:
        self._iam.create_user(region_name=REGION, user_name=name, tags=tags or [])

    def role_policy(self, role: str, name: str, document: str) -> None:
        self._iam.put_role_policy(role_name=role, policy_name=name, policy_json=document)

    def remove_role(self, name: str) -> None:
        """The role and its inline policies, as the HTTP deletes would leave the account."""
        for policy in list(self._iam.get_role(name).policies):
            self._iam.delete_role_policy(role_name=name, policy_name=policy)
        self._iam.delete_role(role_name=name)


def make_principal(iam: Any, kind: str, name: str, tags: dict[str, str] | None = None) -> str:
    tag_list = [{"Key": k, "Value": v} for k, v in (tags or {}).items()]
    if kind == "role":
        return str(
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST, Tags=tag_list)["Role"][
                "Arn"
            ]
        )
    if kind == "user":
        return str(iam.create_user(UserName=name, Tags=tag_list)["User"]["Arn"])
    return str(iam.create_group(GroupName=name)["Group"]["Arn"])


def connect_document(marker: str = "a") -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": f"ConnectAccess{marker}",
                "Effect": "Allow",
                "Action": ["connect:DescribeInstance", "connect:ListQueues"],
                "Resource": f"arn:aws:connect:{REGION}:{HOME_ACCOUNT}:instance/*",
                "Condition": {"DateLessThan": {"aws:CurrentTime": "2026-12-01T00:00:00Z"}},
            }
        ],
    }


def make_plan(
    principal_arn: str,
    kind: PolicyKind = "inline",
    grant_id: str = "g1",
    documents: dict[str, dict[str, Any]] | None = None,
    expires_in: timedelta = timedelta(hours=1),
) -> GrantPlan:
    documents = documents or {f"connect-access-{grant_id}": connect_document()}
    return GrantPlan(
        grant_id=grant_id,
        principal_arn=principal_arn,
        kind=kind,
        policies=tuple(PolicyDocument(name, doc) for name, doc in documents.items()),
        expires_at=datetime.now(UTC) + expires_in,
    )


class _FakeHttp:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}
        self.content = b""
        self.raw = None


@dataclass
class Fault:
    """Fails the named IAM operation `times` times (all calls when None), then lets it
    through. `calls` counts every call of the operation that reached the hook."""

    operation: str
    code: str
    times: int | None = None
    calls: int = 0

    def _due(self) -> bool:
        self.calls += 1
        return self.times is None or self.calls <= self.times

    def error_response(self, **_: Any) -> tuple[_FakeHttp, dict[str, Any]] | None:
        if not self._due():
            return None
        status = 500 if self.code in ("ServiceFailure", "InternalFailure") else 400
        body = {
            "Error": {"Code": self.code, "Message": f"injected {self.code}", "Type": "Sender"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }
        return _FakeHttp(status), body

    def read_timeout(self, request: Any, **_: Any) -> None:
        if self._due():
            raise ReadTimeoutError(endpoint_url=request.url)


FaultFactory = Callable[..., Fault]


@dataclass
class WriteCounter:
    """Counts IAM calls that change something, to prove a repeated attach writes nothing."""

    calls: list[str] = field(default_factory=list)

    def __call__(self, event_name: str, **_: Any) -> None:
        self.calls.append(event_name.rsplit(".", 1)[-1])


WRITE_OPERATIONS = (
    "PutRolePolicy",
    "PutUserPolicy",
    "PutGroupPolicy",
    "CreatePolicy",
    "CreatePolicyVersion",
    "TagPolicy",
    "DeleteRolePolicy",
    "DeleteUserPolicy",
    "DeleteGroupPolicy",
    "DeletePolicy",
    "DeletePolicyVersion",
    "AttachRolePolicy",
    "AttachUserPolicy",
    "AttachGroupPolicy",
    "DetachRolePolicy",
    "DetachUserPolicy",
    "DetachGroupPolicy",
)
