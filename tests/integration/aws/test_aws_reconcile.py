"""Reconcile against moto: orphan, missing, tampered and stranded policies, dry-run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_testkit import (
    HOME_ACCOUNT,
    FaultFactory,
    ProcessKilled,
    connect_document,
    make_plan,
    make_principal,
)
from doubles import InMemoryReconcileStore, RecordingNotifier

from bot.aws.granter import IamGranter
from bot.aws.principals import tagged_principals
from bot.aws.reconcile import format_summary, reconcile
from bot.ports import GrantPlan, PolicyKind
from bot.reconcile_model import ExpectedGrant


def now() -> datetime:
    """The time of the call: plans are made relative to it (make_plan), so a module-level
    "now" would go stale in a long session and turn an expired plan into a live one."""
    return datetime.now(UTC)


def expected(
    plan: GrantPlan, state: Any = "active", since: datetime | None = None
) -> ExpectedGrant:
    """The store's view of a plan the bot attached: the same plan, in `state`."""
    return ExpectedGrant(**vars(plan), state=state, state_since=since)


def inline_policies(iam: Any, role: str) -> dict[str, Any]:
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    return {n: iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"] for n in names}


def managed_names(iam: Any) -> list[str]:
    return sorted(p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"])


@pytest.fixture
def world(iam: Any, granter: IamGranter) -> dict[str, Any]:
    """One role with: an active grant intact (ok), an active grant deleted by hand (missing),
    an active grant edited by hand (tampered), and a policy no grant explains (orphan);
    plus the operator's own policy that reconcile must never touch."""
    arn = make_principal(iam, "role", "agent")
    plans = {name: make_plan(arn, "inline", name) for name in ("ok", "missing", "tampered")}
    for plan in plans.values():
        granter.attach(plan)
    granter.attach(make_plan(arn, "inline", "orphan"))
    iam.delete_role_policy(RoleName="agent", PolicyName="connect-access-missing")
    widened = connect_document()
    widened["Statement"][0]["Action"] = "connect:*"
    iam.put_role_policy(
        RoleName="agent", PolicyName="connect-access-tampered", PolicyDocument=json.dumps(widened)
    )
    iam.put_role_policy(
        RoleName="agent", PolicyName="operators-own", PolicyDocument=json.dumps(widened)
    )
    store = InMemoryReconcileStore(
        grants=[expected(plan) for plan in plans.values()],
        principals=[arn],
    )
    return {"arn": arn, "store": store, "plans": plans}


def test_reconcile_repairs_orphan_missing_and_tampered_policies(
    iam: Any, granter: IamGranter, world: dict[str, Any], notifier: RecordingNotifier
) -> None:
    store: InMemoryReconcileStore = world["store"]

    findings = reconcile(granter, store, now=now(), notifier=notifier)

    by_policy = {f.policy_name: f.kind for f in findings}
    assert by_policy == {
        "connect-access-ok": "ok",
        "connect-access-missing": "missing",
        "connect-access-tampered": "tampered",
        "connect-access-orphan": "orphan",
    }
    held = inline_policies(iam, "agent")
    assert sorted(held) == [
        "connect-access-missing",
        "connect-access-ok",
        "connect-access-tampered",
        "operators-own",
    ]
    assert held["connect-access-tampered"] == connect_document()
    assert held["connect-access-missing"] == connect_document()
    # Every finding but "ok" is an audit event and a notification.
    assert sorted(f.kind for f in store.findings) == ["missing", "orphan", "tampered"]
    assert all(f.applied and not f.error for f in store.findings)
    assert sorted(n.detail["finding"] for n in notifier.sent) == ["missing", "orphan", "tampered"]
    assert {n.event for n in notifier.sent} == {"reconcile_finding"}
    assert store.failed == {}
    # A second run finds everything in order.
    assert {f.kind for f in reconcile(granter, store, now=now())} == {"ok"}


def test_dry_run_reports_the_same_findings_and_changes_nothing(
    iam: Any, granter: IamGranter, world: dict[str, Any], notifier: RecordingNotifier
) -> None:
    store: InMemoryReconcileStore = world["store"]
    before = inline_policies(iam, "agent")

    findings = reconcile(granter, store, now=now(), dry_run=True, notifier=notifier)

    assert sorted(f.kind for f in findings) == ["missing", "ok", "orphan", "tampered"]
    assert not any(f.applied for f in findings)
    assert inline_policies(iam, "agent") == before
    assert store.findings == []
    assert store.failed == {}
    assert notifier.sent == []
    table = format_summary(findings)
    assert "(dry-run)" in table
    assert "missing: 1, ok: 1, orphan: 1, tampered: 1" in table


@pytest.mark.parametrize(
    ("kind", "operation"),
    [("inline", "PutUserPolicy"), ("managed", "CreatePolicy"), ("managed", "AttachUserPolicy")],
)
def test_a_crash_between_the_iam_call_and_the_commit_is_repaired(
    iam: Any, granter: IamGranter, kind: PolicyKind, operation: str
) -> None:
    arn = make_principal(iam, "user", "erin")
    plan = make_plan(arn, kind, "crashed")

    def die(**_: Any) -> None:
        raise ProcessKilled

    # The lifecycle committed `granting`, then the process died right after IAM said yes.
    iam.meta.events.register(f"after-call.iam.{operation}", die)
    with pytest.raises(ProcessKilled):
        granter.attach(plan)
    iam.meta.events.unregister(f"after-call.iam.{operation}", die)
    assert iam.list_user_policies(UserName="erin")["PolicyNames"] or managed_names(iam)

    store = InMemoryReconcileStore(
        grants=[expected(plan, "granting", since=now() - timedelta(minutes=10))],
        principals=[arn],
    )
    findings = reconcile(granter, store, now=now())

    assert [f.kind for f in findings] == ["stranded"]
    assert iam.list_user_policies(UserName="erin")["PolicyNames"] == []
    assert iam.list_attached_user_policies(UserName="erin")["AttachedPolicies"] == []
    assert managed_names(iam) == []
    assert "crashed" in store.failed
    assert "nothing is granted" in store.failed["crashed"]
    assert [f.kind for f in store.findings] == ["stranded"]


def test_a_grant_being_attached_right_now_is_left_alone(iam: Any, granter: IamGranter) -> None:
    arn = make_principal(iam, "role", "busy")
    plan = make_plan(arn, "inline", "in-flight")
    granter.attach(plan)
    store = InMemoryReconcileStore(
        grants=[expected(plan, "granting", since=now() - timedelta(seconds=20))], principals=[arn]
    )

    findings = reconcile(granter, store, now=now())

    assert findings == []
    assert iam.list_role_policies(RoleName="busy")["PolicyNames"] == ["connect-access-in-flight"]
    assert store.failed == {}


def test_a_missing_policy_that_cannot_be_restored_fails_the_grant(
    iam: Any, granter: IamGranter, inject: FaultFactory
) -> None:
    arn = make_principal(iam, "role", "full")
    plan = make_plan(arn, "inline", "wont-fit")
    store = InMemoryReconcileStore(grants=[expected(plan)], principals=[arn])
    inject("PutRolePolicy", "LimitExceeded", times=None)

    findings = reconcile(granter, store, now=now())

    assert [f.kind for f in findings] == ["missing"]
    assert "LimitExceeded" in findings[0].error
    assert "LimitExceeded" in store.failed["wont-fit"]
    assert store.findings == findings


def test_managed_orphans_and_tampering_are_repaired(iam: Any, granter: IamGranter) -> None:
    arn = make_principal(iam, "role", "mgr")
    kept = make_plan(arn, "managed", "kept")
    granter.attach(kept)
    granter.attach(make_plan(arn, "managed", "attached-orphan"))
    # A revoke that died between detach and delete leaves a detached policy behind.
    granter.attach(make_plan(arn, "managed", "detached-orphan"))
    detached_arn = (
        f"arn:aws:iam::{HOME_ACCOUNT}:policy/connect-access/connect-access-detached-orphan"
    )
    iam.detach_role_policy(RoleName="mgr", PolicyArn=detached_arn)
    kept_arn = f"arn:aws:iam::{HOME_ACCOUNT}:policy/connect-access/connect-access-kept"
    iam.create_policy_version(
        PolicyArn=kept_arn, PolicyDocument=json.dumps(connect_document("evil")), SetAsDefault=True
    )
    store = InMemoryReconcileStore(grants=[expected(kept)], principals=[arn])

    findings = reconcile(granter, store, now=now())

    assert sorted((f.kind, f.policy_name) for f in findings) == [
        ("orphan", "connect-access-attached-orphan"),
        ("orphan", "connect-access-detached-orphan"),
        ("tampered", "connect-access-kept"),
    ]
    assert managed_names(iam) == ["connect-access-kept"]
    default = iam.get_policy(PolicyArn=kept_arn)["Policy"]["DefaultVersionId"]
    restored = iam.get_policy_version(PolicyArn=kept_arn, VersionId=default)
    assert restored["PolicyVersion"]["Document"] == connect_document()


def test_tagged_principals_are_scanned_too(iam: Any, granter: IamGranter) -> None:
    arn = make_principal(iam, "role", "tagged", {"connect-access:managed": "true"})
    make_principal(iam, "role", "untagged")
    granter.attach(make_plan(arn, "inline", "left-over"))
    store = InMemoryReconcileStore()  # the database never heard of this principal

    extra = [found for found, _ in tagged_principals(iam)]
    findings = reconcile(granter, store, now=now(), extra_principals=extra)

    assert extra == [arn]
    assert [(f.kind, f.principal_arn) for f in findings] == [("orphan", arn)]
    assert iam.list_role_policies(RoleName="tagged")["PolicyNames"] == []


def test_an_expired_grant_missing_its_policy_is_not_re_attached(
    iam: Any, granter: IamGranter
) -> None:
    arn = make_principal(iam, "role", "late")
    plan = make_plan(arn, "inline", "expired", expires_in=timedelta(minutes=-5))
    store = InMemoryReconcileStore(grants=[expected(plan)], principals=[arn])

    findings = reconcile(granter, store, now=now())

    assert [f.kind for f in findings] == ["missing"]
    assert "expiry sweep" in findings[0].action
    assert iam.list_role_policies(RoleName="late")["PolicyNames"] == []


def test_principals_deleted_from_iam_are_skipped(iam: Any, granter: IamGranter) -> None:
    store = InMemoryReconcileStore(principals=[f"arn:aws:iam::{HOME_ACCOUNT}:role/deleted"])

    assert reconcile(granter, store, now=now()) == []


def test_the_summary_table_lists_every_finding(granter: IamGranter, world: dict[str, Any]) -> None:
    findings = reconcile(granter, world["store"], now=now())

    table = format_summary(findings)

    lines = table.splitlines()
    assert lines[0].split() == ["FINDING", "PRINCIPAL", "POLICY", "GRANT", "ACTION", "ERROR"]
    assert any(
        line.startswith("orphan") and "inline:connect-access-orphan" in line for line in lines
    )
    assert lines[-1] == "missing: 1, ok: 1, orphan: 1, tampered: 1"
    assert format_summary([]).endswith("nothing found")


class SnapshotTakenTooEarly(InMemoryReconcileStore):
    """The grant became active after reconcile read the database: its snapshot is empty,
    but asking again shows the grant is live."""

    def expected_grants(self) -> list[ExpectedGrant]:
        return []


def test_a_grant_made_after_the_snapshot_is_not_removed_as_an_orphan(
    iam: Any, granter: IamGranter
) -> None:
    arn = make_principal(iam, "role", "latecomer")
    plan = make_plan(arn, "inline", "fresh01")
    granter.attach(plan)
    store = SnapshotTakenTooEarly(grants=[expected(plan)], principals=[arn])
    findings = reconcile(granter, store, now=now())
    assert [f.kind for f in findings] == []
    assert "connect-access-fresh01" in inline_policies(iam, "latecomer")
    # Without the live grant the same policy is an orphan and goes.
    findings = reconcile(granter, SnapshotTakenTooEarly(principals=[arn]), now=now())
    assert [f.kind for f in findings] == ["orphan"]
    assert inline_policies(iam, "latecomer") == {}


@pytest.mark.parametrize(
    ("name", "grant_id"),
    [("connect-access-abc123", "abc123"), ("connect-access-abc123-2", "abc123")],
)
def test_grant_id_of_policy_names(name: str, grant_id: str) -> None:
    from bot.aws.reconcile import grant_id_of

    assert grant_id_of(name) == grant_id
