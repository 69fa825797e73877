"""Reconcile against a rate-limited IAM (moto behind tests/throttling_iam.py): it reads
whole accounts a page at a time, carries on past principals IAM keeps throttling, reports
them as unchecked and changes nothing about them."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from aws_testkit import REGION, MotoIamSeed, connect_document, make_plan
from doubles import InMemoryReconcileStore
from throttling_iam import ThrottlingIamProxy

from bot.aws.granter import IamGranter
from bot.aws.reconcile import format_summary, reconcile
from bot.aws.sessions import AwsSessions
from bot.reconcile_model import ExpectedGrant, ReconcileProgress

pytestmark = pytest.mark.slow
ACCOUNT = "123456789012"


class Principals:
    """`count` roles in moto, each with one orphan policy of the bot's, and the first one
    also holding an active grant's policy."""

    def __init__(self, moto_url: str, count: int) -> None:
        self.tag = f"{random.randrange(16**6):06x}"
        self.iam = boto3.client("iam", region_name=REGION, endpoint_url=moto_url)
        self.names = [f"rec-{self.tag}-{i:04d}" for i in range(count)]
        document = json.dumps(connect_document())
        # Into moto's backend (MotoIamSeed): 600 HTTP calls took 14-30 s of each test's
        # set-up on a loaded 2-core machine.
        seed = MotoIamSeed()
        for name in self.names:
            seed.role(name)
            seed.role_policy(name, f"connect-access-o{name[-8:]}", document)
        self.arns = [f"arn:aws:iam::{ACCOUNT}:role/{name}" for name in self.names]

    def policies(self, name: str) -> list[str]:
        return list(self.iam.list_role_policies(RoleName=name)["PolicyNames"])

    def remove(self) -> None:
        """moto's state outlives the test in this worker: 300 roles left behind would
        swell every account-wide listing of the tests that run after it."""
        seed = MotoIamSeed()  # 900 HTTP calls otherwise: 4-6 s of teardown per test
        for name in self.names:
            seed.remove_role(name)


@pytest.fixture
def principals(moto_url: str, fake_aws_credentials: None) -> Iterator[Principals]:
    made = Principals(moto_url, 300)
    yield made
    made.remove()


def test_reconcile_over_300_principals_reads_the_account_not_each_principal(
    proxy: ThrottlingIamProxy, principals: Principals
) -> None:
    aws = AwsSessions(REGION, proxy.url, max_attempts=4, iam_requests_per_second=50)
    granter = IamGranter(aws.iam_for_principal)
    plan = make_plan(principals.arns[0], "inline", f"live{principals.tag}")
    granter.attach(plan)
    store = InMemoryReconcileStore(grants=[ExpectedGrant(**vars(plan))],
                                   principals=principals.arns)
    proxy.set_rate(50)
    proxy.reset()
    seen: list[ReconcileProgress] = []

    findings = reconcile(granter, store, now=datetime.now(UTC), progress=seen.append)

    kinds = [f.kind for f in findings]
    assert kinds.count("orphan") == 300 and kinds.count("ok") == 1
    assert all(f.error == "" for f in findings)
    assert all(principals.policies(n) == [] for n in principals.names[1:])
    assert principals.policies(principals.names[0]) == [plan.policies[0].name]
    reads = {a: n for a, n in proxy.counts.requests.items() if a.startswith(("Get", "List"))}
    # One page for the whole account (moto never truncates it), no listing per principal;
    # only each orphan is read once more right before it is removed (a revoke may have
    # taken it meanwhile).
    assert reads == {"GetAccountAuthorizationDetails": 1, "GetRolePolicy": 300}
    assert proxy.counts.forwarded["DeleteRolePolicy"] == 300  # each orphan removed once
    assert seen[-1] == ReconcileProgress("done", 300, 300, 0)
    assert [p.done for p in seen if p.stage == "reading"][-1] == 300


def test_reconcile_carries_on_past_throttling_and_reports_what_it_could_not_check(
    proxy: ThrottlingIamProxy, principals: Principals
) -> None:
    granter = IamGranter(AwsSessions(REGION, proxy.url, max_attempts=2).iam_for_principal)
    arns, names = principals.arns[:12], principals.names[:12]
    plan = make_plan(arns[1], "inline", f"live{principals.tag}")
    granter.attach(plan)
    principals.iam.delete_role_policy(RoleName=names[1], PolicyName=plan.policies[0].name)
    store = InMemoryReconcileStore(grants=[ExpectedGrant(**vars(plan))], principals=arns)
    # IAM's budget is gone for the one-pass read and, whenever they are asked about, for
    # three of the principals: every retry botocore makes is throttled too.
    stuck = set(names[:3])

    def busy(action: str, params: dict[str, Any]) -> bool:
        return action == "GetAccountAuthorizationDetails" or params.get("RoleName") in stuck

    proxy.always_throttle = busy
    seen: list[ReconcileProgress] = []

    findings = reconcile(granter, store, now=datetime.now(UTC), progress=seen.append)

    unchecked = {f.principal_arn for f in findings if f.kind == "unchecked"}
    assert unchecked == set(arns[:3])
    assert all("Throttling" in f.error for f in findings if f.kind == "unchecked")
    assert [f.kind for f in findings].count("orphan") == 9
    # Nothing changed for the principals it could not read: the orphans stay, and the
    # grant on one of them is not taken for missing.
    assert [len(principals.policies(n)) for n in names[:3]] == [1, 1, 1]  # their orphans
    assert plan.policies[0].name not in principals.policies(names[1])  # not re-attached
    assert all(principals.policies(n) == [] for n in names[3:12])
    assert not any(f.kind == "missing" for f in findings) and store.failed == {}
    assert proxy.counts.throttled["GetAccountAuthorizationDetails"] == 2  # botocore's two
    assert seen[-1] == ReconcileProgress("done", 12, 12, 3)
    assert "unchecked" in format_summary(findings)
