"""The bot against a rate-limited IAM: moto behind tests/throttling_iam.py, which answers
IAM's real `Throttling` error beyond a set rate, over real HTTP, so botocore's retries, the
client-side rate limiter and the lifecycle all run as they would against AWS. Call counts
come from the proxy. No timing is asserted: what is checked is what reached IAM and the
states grants end in.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_testkit import REGION, TRUST, SleepRecorder
from botocore.awsrequest import AWSResponse
from doubles import (
    FakeClock,
    RecordingNotifier,
    StaticApproverDirectory,
    StaticPrincipalDirectory,
)
from grant_flow_kit import READ_ENTRY, operator_config_data
from sqlalchemy import select
from throttling_iam import ThrottlingIamProxy

from bot.aws.granter import IamGranter
from bot.aws.identity_center import IdentityCenterGranter
from bot.aws.sessions import AwsSessions
from bot.catalog import Catalog
from bot.config import parse_config
from bot.db import SessionFactory
from bot.expiry import LifecycleExpiryWork
from bot.iamref import IamReference
from bot.lifecycle import RequestService
from bot.models import Grant
from bot.policy import plan_builder
from bot.ports import GrantError

pytestmark = pytest.mark.slow
LEADS = ("U0LEAD01", "U0LEAD02")


class Bot:
    """RequestService on the database with the real IAM granter reaching moto through the
    throttling proxy; `people` requesters, each with a role of their own."""

    def __init__(self, proxy: ThrottlingIamProxy, session_factory: SessionFactory,
                 catalog: Catalog, aws: AwsSessions, people: int) -> None:
        self.proxy = proxy
        self.sessions = session_factory
        self.tag = f"{random.randrange(16**6):06x}"  # moto's server state outlives tests
        self.iam = aws.iam()
        self.requesters = [f"U0R{self.tag.upper()}{i:03d}" for i in range(people)]
        self.roles = {u: f"thr-{self.tag}-{i:03d}" for i, u in enumerate(self.requesters)}
        data = operator_config_data()
        data["principals"] = {u: f"arn:aws:iam::123456789012:role/{role}"
                              for u, role in self.roles.items()}
        config = parse_config(data, "test")
        for role in self.roles.values():
            self.iam.create_role(RoleName=role, AssumeRolePolicyDocument=TRUST)
        self.clock = FakeClock(datetime.now(UTC))
        self.notifier = RecordingNotifier()
        self.granter = IamGranter(aws.iam_for_principal)
        self.service = RequestService(
            sessions=session_factory, catalog=catalog, config=config, granter=self.granter,
            notifier=self.notifier, approvers=StaticApproverDirectory({"S0LEADS": LEADS}),
            principals=StaticPrincipalDirectory(config.principals), clock=self.clock,
            plan_builder=plan_builder(catalog, IamReference()), max_revoke_attempts=3,
            pacing=aws,
        )

    def grant(self, requester: str, duration: timedelta = timedelta(hours=1)) -> str:
        request = self.service.submit(requester=requester, entry_id=READ_ENTRY,
                                      reason="incident INC-42", duration=duration)
        self.service.approve(request.id, "U0LEAD01")
        with self.sessions() as session:
            grant = session.execute(
                select(Grant).where(Grant.request_id == request.id)).scalar_one()
        assert grant.state == "active"
        return grant.id

    def grants(self) -> dict[str, Grant]:
        with self.sessions() as session:
            return {g.id: g for g in session.execute(select(Grant)).scalars()}

    def policies_left(self) -> int:
        return sum(len(self.iam.list_role_policies(RoleName=r)["PolicyNames"])
                   for r in self.roles.values())


def test_a_throttled_revoke_never_becomes_irrevocable(
    proxy: ThrottlingIamProxy, session_factory: SessionFactory, catalog: Catalog
) -> None:
    aws = AwsSessions(REGION, proxy.url, max_attempts=2, retry_mode="standard")
    bot = Bot(proxy, session_factory, catalog, aws, people=1)
    grant_id = bot.grant(bot.requesters[0], duration=timedelta(minutes=5))
    work = LifecycleExpiryWork(bot.service, session_factory)
    proxy.set_rate(0)  # IAM refuses every request: an account whose budget is used up
    proxy.reset()

    bot.clock.advance(timedelta(minutes=5))
    for _ in range(6):  # twice max_revoke_attempts, and more
        work.revoke_overdue(bot.clock.now())
        bot.clock.advance(bot.service.throttle_retry)

    grant = bot.grants()[grant_id]
    assert grant.state == "revoking" and grant.revoke_attempts == 0
    assert "Throttling" in (grant.last_error or "")
    assert "irrevocable" not in bot.notifier.events()
    # One retry policy: botocore's two attempts per lifecycle attempt, nothing stacked.
    assert proxy.counts.requests["DeleteRolePolicy"] == 6 * 2
    assert proxy.counts.throttled["DeleteRolePolicy"] == 6 * 2

    proxy.set_rate(None)
    work.revoke_overdue(bot.clock.now())

    assert bot.grants()[grant_id].state == "revoked"
    assert proxy.counts.forwarded["DeleteRolePolicy"] == 1
    assert bot.policies_left() == 0
    assert bot.notifier.events()[-1] == "revoked"


def test_the_drain_follows_expiry_order_under_throttling(
    proxy: ThrottlingIamProxy, session_factory: SessionFactory, catalog: Catalog
) -> None:
    # The bot believes IAM allows 20/s; it allows 8/s: throttles happen and are absorbed.
    aws = AwsSessions(REGION, proxy.url, max_attempts=5, retry_mode="standard",
                      iam_requests_per_second=20, iam_burst=1)
    bot = Bot(proxy, session_factory, catalog, aws, people=9)
    order = list(range(9))
    random.Random(18).shuffle(order)  # granted in one order, expiring in another
    expiry_of = {}
    for minutes, requester in zip(order, bot.requesters, strict=True):
        grant_id = bot.grant(requester, duration=timedelta(minutes=10 + minutes))
        expiry_of[grant_id] = bot.grants()[grant_id].expires_at
    proxy.set_rate(8, burst=1)
    proxy.reset()
    bot.clock.advance(timedelta(minutes=30))
    work = LifecycleExpiryWork(bot.service, session_factory, revoke_workers=1, batch_size=4)

    for _ in range(20):
        if not bot.service.due_for_revocation():
            break
        work.revoke_overdue(bot.clock.now())
        bot.clock.advance(bot.service.throttle_retry)

    grants = bot.grants()
    assert {g.state for g in grants.values()} == {"revoked"}
    assert all(g.revoke_attempts == 0 for g in grants.values())
    first_attempt: list[str] = []
    for record in proxy.records("DeleteRolePolicy"):
        name = record.params["PolicyName"].removeprefix("connect-access-")
        if name not in first_attempt:
            first_attempt.append(name)
    assert first_attempt == sorted(expiry_of, key=lambda g: expiry_of[g])
    forwarded = [r.params["PolicyName"] for r in proxy.records("DeleteRolePolicy")
                 if not r.throttled]
    assert sorted(forwarded) == sorted(f"connect-access-{g}" for g in expiry_of)  # no doubles
    assert bot.policies_left() == 0


def test_the_client_side_rate_limit_keeps_the_bot_under_iams_rate(
    proxy: ThrottlingIamProxy,
) -> None:
    unpaced = AwsSessions(REGION, proxy.url, max_attempts=1).iam()
    paced = AwsSessions(REGION, proxy.url, max_attempts=1, iam_requests_per_second=5,
                        iam_burst=1).iam()
    proxy.set_rate(5, burst=3)

    unpaced_errors = _list_repeatedly(unpaced, 12)
    throttled_unpaced = proxy.total_throttled
    proxy.set_rate(5, burst=3)
    proxy.reset()
    paced_errors = _list_repeatedly(paced, 12)

    assert throttled_unpaced >= 6 and unpaced_errors == throttled_unpaced
    assert proxy.total_throttled == 0 and paced_errors == 0
    assert proxy.counts.forwarded["ListAccountAliases"] == 12


def _list_repeatedly(iam: Any, times: int) -> int:
    errors = 0
    for _ in range(times):
        try:
            iam.list_account_aliases()
        except iam.exceptions.ClientError:
            errors += 1
    return errors


def test_a_grant_slowed_by_the_rate_limit_tells_the_requester_it_is_queued(
    proxy: ThrottlingIamProxy, session_factory: SessionFactory, catalog: Catalog
) -> None:
    # Two IAM requests a second: a grant's four calls take well over the notice threshold.
    aws = AwsSessions(REGION, proxy.url, max_attempts=5, iam_requests_per_second=2,
                      iam_burst=1)
    bot = Bot(proxy, session_factory, catalog, aws, people=1)
    bot.service.queued_notice_after = timedelta(seconds=0.3)
    proxy.set_rate(2, burst=3)

    bot.grant(bot.requesters[0])

    events = bot.notifier.events()
    assert events.count("grant_queued") == 1
    assert events.index("grant_queued") < events.index("granted")
    queued = next(n for n in bot.notifier.sent if n.event == "grant_queued")
    assert queued.detail["requester"] == bot.requesters[0]
    assert queued.detail["expected_wait_seconds"] > 0
    assert bot.notifier.events()[-1] == "granted"


# -- one retry policy: botocore's attempts, never multiplied by a loop of ours ----------


def test_a_throttled_iam_call_is_tried_max_attempts_times_in_all(
    proxy: ThrottlingIamProxy,
) -> None:
    aws = AwsSessions(REGION, proxy.url, max_attempts=3, retry_mode="standard")
    role = f"thr-once-{random.randrange(16**6):06x}"
    aws.iam().create_role(RoleName=role, AssumeRolePolicyDocument=TRUST)
    # The granter's own retry (for IAM's consistency conflicts) allows 5 tries: were it
    # stacked on botocore's, a throttled call would reach IAM 3 x 5 = 15 times.
    sleeps = SleepRecorder()
    granter = IamGranter(aws.iam_for_principal, attempts=5, sleep=sleeps)
    proxy.set_rate(0)
    proxy.reset()

    with pytest.raises(GrantError) as raised:
        granter.revoke(f"arn:aws:iam::123456789012:role/{role}", "inline",
                       ["connect-access-once"])

    assert raised.value.throttled and raised.value.transient
    assert proxy.counts.requests["DeleteRolePolicy"] == 3
    assert proxy.total_requests == 3
    assert sleeps.delays == []  # the granter waited for nothing of its own


class SsoAdminAnswers:
    """Answers one Identity Center operation at the HTTP layer (botocore's before-send, so
    its retry handler sees every answer, as from the service) with `codes` in turn, then
    lets requests through to moto; counts every HTTP attempt."""

    def __init__(self, operation: str, codes: list[str]) -> None:
        self.operation = operation
        self.codes = list(codes)
        self.attempts = 0

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        self.attempts += 1
        if not self.codes:
            return None
        code = self.codes.pop(0)
        body = json.dumps({"__type": code, "message": f"injected {code}"}).encode()
        return AWSResponse(request.url, 400, {"x-amzn-ErrorType": code}, _Body(body))


class _Body:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.payload


def identity_center(moto_url: str, answers: SsoAdminAnswers, *, max_attempts: int,
                    attempts: int, sleeps: SleepRecorder) -> IdentityCenterGranter:
    aws = AwsSessions(REGION, moto_url, max_attempts=max_attempts, retry_mode="standard")
    sso, ids = aws.client("sso-admin"), aws.client("identitystore")
    instance = sso.list_instances()["Instances"][0]
    sso.meta.events.register(f"before-send.sso-admin.{answers.operation}", answers)
    return IdentityCenterGranter(lambda: sso, lambda: ids,
                                 instance_arn=instance["InstanceArn"],
                                 identity_store_id=instance["IdentityStoreId"],
                                 attempts=attempts, base_delay=0.01, sleep=sleeps)


def test_a_throttled_identity_center_call_is_tried_max_attempts_times_in_all(
    moto_url: str, fake_aws_credentials: None,
) -> None:
    answers = SsoAdminAnswers("ListPermissionSets", ["ThrottlingException"] * 10)
    sleeps = SleepRecorder()
    granter = identity_center(moto_url, answers, max_attempts=3, attempts=5, sleeps=sleeps)

    with pytest.raises(GrantError) as raised:
        granter.managed_permission_sets()

    # botocore's three attempts and nothing more: the granter used to retry throttling
    # itself, up to 5 x 3 = 15 requests for one call.
    assert answers.attempts == 3
    assert raised.value.throttled and raised.value.code == "ThrottlingException"
    assert sleeps.delays == []


def test_identity_center_conflicts_are_retried_by_the_granter_within_its_bound(
    moto_url: str, fake_aws_credentials: None,
) -> None:
    # botocore does not retry ConflictException (a write to the set still in flight): one
    # HTTP attempt per try, and the granter's bounded retry makes the tries.
    settles = SsoAdminAnswers("ListPermissionSets", ["ConflictException"] * 2)
    sleeps = SleepRecorder()
    granter = identity_center(moto_url, settles, max_attempts=3, attempts=4, sleeps=sleeps)
    assert granter.managed_permission_sets() == []
    assert settles.attempts == 3 and len(sleeps.delays) == 2

    stuck = SsoAdminAnswers("ListPermissionSets", ["ConflictException"] * 10)
    sleeps = SleepRecorder()
    granter = identity_center(moto_url, stuck, max_attempts=3, attempts=4, sleeps=sleeps)
    with pytest.raises(GrantError) as raised:
        granter.managed_permission_sets()
    assert stuck.attempts == 4 and len(sleeps.delays) == 3
    # Still "try later" for the lifecycle: a revoke waits for its retry, not irrevocable.
    assert raised.value.transient and raised.value.code == "ConflictException"
