"""The request lifecycle on a real database (SQLite and PostgreSQL) driving the real IAM
granter against moto, with the real policy compiler (bot.policy.plan_builder) building the
documents; the `flow` fixture is in conftest.py.

Faults are injected with botocore event hooks on the granter's own IAM client, so
everything above the HTTP layer runs for real.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from aws_testkit import Fault, ProcessKilled
from grant_flow_kit import MANAGED_ENTRY, READ_ENTRY, Flow

from bot.aws.granter import document_hash
from bot.aws.reconcile import reconcile
from bot.reconcile_store import DbReconcileStore


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


@pytest.mark.parametrize("code", ["LimitExceeded", "ServiceFailure"])
def test_an_attach_that_fails_fails_the_request_with_nothing_left_in_iam(
    flow: Flow, code: str
) -> None:
    fault = Fault("PutRolePolicy", code)
    flow.inject("PutRolePolicy", fault.error_response)
    request_id = flow.submit()

    flow.service.approve(request_id, "U0LEAD01")

    # Neither is retried above botocore (whose retries are off here): one retry policy.
    assert fault.calls == 1
    assert flow.sleeps.delays == []
    assert flow.request(request_id).state == "failed"
    grant = flow.grant_of(request_id)
    assert grant.state == "failed" and code in (grant.last_error or "")
    assert flow.inline() == {}
    failed = [n for n in flow.notifier.sent if n.event == "failed"]
    assert len(failed) == 1 and failed[0].request_id == request_id
    assert failed[0].detail["requester"] == "U0ALICE" and code in failed[0].detail["error"]
    assert flow.actions(request_id)[-2:] == ["granting", "grant_failed"]
    assert flow.chain_ok()


def test_a_throttled_attach_waits_and_the_grant_ends_active_and_the_requester_is_told(
    flow: Flow,
) -> None:
    fault = Fault("PutRolePolicy", "Throttling", times=2)
    flow.inject("PutRolePolicy", fault.error_response)
    request_id = flow.submit()

    flow.service.approve(request_id, "U0LEAD01")

    assert fault.calls == 3  # throttled twice (after botocore's retries), then put
    assert flow.sleeps.delays == [5.0, 5.0]  # the lifecycle's throttle_retry
    assert flow.request(request_id).state == "active"
    assert list(flow.inline()) == flow.grant_of(request_id).policy_names
    events = flow.notifier.events(request_id)
    assert events.count("grant_queued") == 1
    assert events.index("grant_queued") < events.index("granted")
    assert "failed" not in events
    assert flow.chain_ok()


def test_an_attach_throttled_past_patience_fails_with_nothing_left(flow: Flow) -> None:
    flow.service.grant_throttle_retries = 2
    fault = Fault("PutRolePolicy", "Throttling", times=None)
    flow.inject("PutRolePolicy", fault.error_response)
    request_id = flow.submit()

    flow.service.approve(request_id, "U0LEAD01")

    assert fault.calls == 3
    assert flow.request(request_id).state == "failed"
    assert flow.inline() == {}
    assert flow.notifier.events(request_id)[-2:] == ["grant_queued", "failed"]


def test_a_revoke_that_keeps_failing_becomes_irrevocable_and_is_retried_until_it_works(
    flow: Flow,
) -> None:
    request_id = flow.submit()
    flow.service.approve(request_id, "U0LEAD01")
    grant_id = flow.grant_of(request_id).id
    fault = Fault("DeleteRolePolicy", "ServiceFailure")
    flow.inject("DeleteRolePolicy", fault.error_response)

    first = flow.service.revoke(request_id, "U0ALICE", "done")
    assert first.state == "revoking" and "ServiceFailure" in (first.error or "")
    # The lifecycle's own backoff between whole attempts: 30 s, then 60 s.
    states = []
    for wait in (timedelta(seconds=30), timedelta(seconds=60)):
        assert flow.service.due_for_revocation() == []
        flow.clock.advance(wait)
        (outcome,) = flow.service.revoke_due_batch()
        assert outcome.grant_id == grant_id
        states.append(outcome.state)

    assert states == ["revoking", "irrevocable"]
    assert fault.calls == 3  # three lifecycle attempts; botocore (off here) retries each
    assert list(flow.inline()) == flow.grant_of(request_id).policy_names  # still there
    alerts = [n for n in flow.notifier.sent if n.event == "irrevocable"]
    assert len(alerts) == 1 and alerts[0].detail["attempts"] == 3
    assert "ServiceFailure" in alerts[0].detail["error"]
    # Irrevocable grants are retried on the longer period (15 m here), not before.
    flow.clock.advance(timedelta(minutes=14))
    assert flow.service.due_for_revocation() == []

    flow.heal("DeleteRolePolicy", fault.error_response)
    flow.clock.advance(timedelta(minutes=1))
    outcomes = flow.service.revoke_due_batch()

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


def test_a_throttled_revoke_is_never_counted_and_never_becomes_irrevocable(flow: Flow) -> None:
    request_id = flow.submit()
    flow.service.approve(request_id, "U0LEAD01")
    grant_id = flow.grant_of(request_id).id
    fault = Fault("DeleteRolePolicy", "Throttling")
    flow.inject("DeleteRolePolicy", fault.error_response)

    first = flow.service.revoke(request_id, "U0ALICE", "done")
    states = [first.state]
    for _ in range(10):  # far past max_revoke_attempts (3 here)
        flow.clock.advance(flow.service.throttle_retry)
        (outcome,) = flow.service.revoke_due_batch()
        assert outcome.grant_id == grant_id
        states.append(outcome.state)

    assert states == ["revoking"] * 11
    assert fault.calls == 11
    grant = flow.grant_of(request_id)
    assert grant.revoke_attempts == 0 and "Throttling" in (grant.last_error or "")
    assert "irrevocable" not in flow.notifier.events(request_id)

    flow.heal("DeleteRolePolicy", fault.error_response)
    flow.clock.advance(flow.service.throttle_retry)
    assert [o.state for o in flow.service.revoke_due_batch()] == ["revoked"]
    assert flow.inline() == {}
    assert flow.chain_ok()
