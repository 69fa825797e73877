"""Faults injected at each IAM call the granter makes (botocore event hooks on the real
client, so everything above the HTTP layer runs for real against moto).

botocore's retries are off here (max_attempts=1), so each hook fault is what botocore
would have given up on: throttling, service failures and time-outs surface at once as
GrantError(transient=True) (throttled=True for Throttling), with nothing left on the
principal after an attach; the granter retries only IAM's consistency conflicts. Permanent
faults are not retried. NoSuchEntity while removing means already removed. botocore's own
retries against a throttling IAM are in test_aws_throttling.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from aws_testkit import (
    HOME_ACCOUNT,
    OTHER_INSTANCE,
    Fault,
    FaultFactory,
    SleepRecorder,
    connect_document,
    make_plan,
    make_principal,
)

from bot.aws.granter import IamGranter
from bot.aws.sessions import AwsSessions
from bot.ports import GrantError

NAME = "connect-access-f1"
POLICY_ARN = f"arn:aws:iam::{HOME_ACCOUNT}:policy/connect-access/{NAME}"
ATTEMPTS = 4  # the granter fixture's setting

# (flow, IAM operation the flow calls)
ATTACH_CALLS = [
    ("attach-inline", "GetRolePolicy"),
    ("attach-inline", "PutRolePolicy"),
    ("attach-managed", "GetPolicy"),
    ("attach-managed", "CreatePolicy"),
    ("attach-managed", "AttachRolePolicy"),
    ("attach-managed", "GetPolicyVersion"),
]
REVOKE_CALLS = [
    ("revoke-inline", "DeleteRolePolicy"),
    ("revoke-managed", "DetachRolePolicy"),
    ("revoke-managed", "ListPolicyVersions"),
    ("revoke-managed", "DeletePolicyVersion"),
    ("revoke-managed", "DeletePolicy"),
]
TRANSIENT = ["Throttling", "ServiceFailure", "ReadTimeout"]
CONSISTENCY = ["ConcurrentModification", "EntityTemporarilyUnmodifiable"]


class Scene:
    """A role with, for revoke flows, a grant already in place (managed: two versions,
    so DeletePolicyVersion is really called)."""

    def __init__(self, iam: Any, granter: IamGranter, flow: str) -> None:
        self.iam = iam
        self.granter = granter
        self.flow = flow
        self.arn = make_principal(iam, "role", "target")
        self.kind: Any = "inline" if flow.endswith("inline") else "managed"
        if flow.startswith("revoke"):
            granter.attach(self.plan("old"))
            if self.kind == "managed":
                granter.attach(self.plan("new"))

    def plan(self, marker: str = "a") -> Any:
        return make_plan(self.arn, self.kind, "f1", {NAME: connect_document(marker)})

    def run(self) -> None:
        if self.flow.startswith("attach"):
            self.granter.attach(self.plan())
        else:
            self.granter.revoke(self.arn, self.kind, [NAME])

    def policy_present(self) -> bool:
        inline = self.iam.list_role_policies(RoleName="target")["PolicyNames"]
        attached = self.iam.list_attached_role_policies(RoleName="target")["AttachedPolicies"]
        local = self.iam.list_policies(Scope="Local")["Policies"]
        return bool(inline or attached or local)

    def fails(self) -> GrantError:
        with pytest.raises(GrantError) as caught:
            self.run()
        return caught.value


@pytest.fixture
def scene(iam: Any, granter: IamGranter, sleeps: SleepRecorder, flow: str) -> Scene:
    """The test's flow (its `flow` parameter) set up before any fault is injected; what the
    setup slept is not what the test measures."""
    built = Scene(iam, granter, flow)
    sleeps.delays.clear()
    return built


@pytest.mark.parametrize("code", TRANSIENT)
@pytest.mark.parametrize(("flow", "operation"), ATTACH_CALLS + REVOKE_CALLS)
def test_a_transient_fault_botocore_gave_up_on_is_not_retried_again(
    scene: Scene, inject: FaultFactory, sleeps: SleepRecorder, flow: str, operation: str,
    code: str,
) -> None:
    # botocore's retries are off in these fixtures, so what reaches the granter is the
    # fault botocore gave up on: one retry policy, so the granter does not try it again.
    fault = inject(operation, code, times=None)

    error = scene.fails()

    assert error.transient
    assert error.throttled is (code == "Throttling")
    assert error.code == ("ReadTimeoutError" if code == "ReadTimeout" else code)
    assert fault.calls == 1
    assert sleeps.delays == []
    # A failed attach leaves nothing behind; a failed revoke leaves the grant in place
    # for the caller to retry (the lifecycle tries again later).
    if flow.startswith("attach"):
        assert not scene.policy_present()
    else:
        assert scene.policy_present()


@pytest.mark.parametrize("code", CONSISTENCY)
@pytest.mark.parametrize(("flow", "operation"), ATTACH_CALLS + REVOKE_CALLS)
def test_an_iam_consistency_conflict_is_retried_and_the_call_succeeds(
    scene: Scene, inject: FaultFactory, sleeps: SleepRecorder, flow: str, operation: str,
    code: str,
) -> None:
    # botocore does not retry these (they are IAM's "still applying another change"), so
    # the granter does, with the backoff of its read-after-write retry.
    fault = inject(operation, code, times=2)

    scene.run()

    assert fault.calls >= 3  # two conflicts, then the call that went through
    assert len(sleeps.delays) == 2
    assert all(0 <= d <= 0.1 * 2**i for i, d in enumerate(sleeps.delays))
    assert scene.policy_present() is flow.startswith("attach")


@pytest.mark.parametrize(("flow", "operation"), ATTACH_CALLS[:2] + REVOKE_CALLS[:1])
def test_a_conflict_that_never_clears_becomes_a_transient_grant_error(
    scene: Scene, inject: FaultFactory, flow: str, operation: str
) -> None:
    fault = inject(operation, "ConcurrentModification", times=None)

    error = scene.fails()

    assert (error.transient, error.throttled) == (True, False)
    assert error.code == "ConcurrentModification"
    assert fault.calls >= ATTEMPTS
    assert scene.policy_present() is flow.startswith("revoke")


@pytest.mark.parametrize("code", ["LimitExceeded", "MalformedPolicyDocument", "AccessDenied"])
@pytest.mark.parametrize(("flow", "operation"), ATTACH_CALLS)
def test_a_permanent_fault_on_attach_is_not_retried_and_leaves_nothing(
    scene: Scene, inject: FaultFactory, sleeps: SleepRecorder, operation: str, code: str
) -> None:
    fault = inject(operation, code, times=None)

    error = scene.fails()

    assert not error.transient
    assert error.code == code
    assert fault.calls == 1
    assert sleeps.delays == []
    assert code in str(error)
    assert not scene.policy_present()


@pytest.mark.parametrize(("flow", "operation"), REVOKE_CALLS)
def test_a_permanent_fault_on_revoke_is_reported(
    scene: Scene, inject: FaultFactory, operation: str
) -> None:
    inject(operation, "LimitExceeded", times=None)

    error = scene.fails()

    assert (error.transient, error.code) == (False, "LimitExceeded")
    assert scene.policy_present()


@pytest.mark.parametrize(("flow", "operation"), REVOKE_CALLS)
def test_no_such_entity_while_revoking_means_already_gone(
    scene: Scene, inject: FaultFactory, operation: str
) -> None:
    fault = inject(operation, "NoSuchEntity", times=None)

    scene.run()  # no error

    assert fault.calls >= 1


def test_no_such_entity_when_putting_is_a_permanent_error(
    iam: Any, granter: IamGranter, inject: FaultFactory
) -> None:
    scene = Scene(iam, granter, "attach-inline")
    inject("PutRolePolicy", "NoSuchEntity", times=None)

    error = scene.fails()

    assert (error.transient, error.code) == (False, "NoSuchEntity")
    assert "principal mapping" in str(error)


def test_throttled_assume_role_is_a_throttled_grant_error_and_the_next_attach_works(
    sessions: AwsSessions, granter: IamGranter, sleeps: SleepRecorder
) -> None:
    # Set the other account up with separate sessions, so the granter's own first
    # sts:AssumeRole happens inside attach.
    setup = AwsSessions("us-east-1", instances=[OTHER_INSTANCE], max_attempts=1)
    arn = make_principal(setup.iam(OTHER_INSTANCE), "role", "remote")
    fault = Fault("AssumeRole", "Throttling", times=1)
    sts = sessions.client("sts")  # the client AwsSessions assumes roles with
    sts.meta.events.register("before-call.sts.AssumeRole", fault.error_response)

    with pytest.raises(GrantError) as caught:
        granter.attach(make_plan(arn, "inline", "f2"))
    assert (caught.value.throttled, caught.value.code) == (True, "Throttling")
    assert sessions.assume_role_calls == 0

    granter.attach(make_plan(arn, "inline", "f2"))

    assert fault.calls == 2  # throttled, then assumed
    assert sleeps.delays == []
    assert sessions.assume_role_calls == 1
    remote_iam = sessions.iam(OTHER_INSTANCE)
    assert remote_iam.list_role_policies(RoleName="remote")["PolicyNames"] == ["connect-access-f2"]
