"""Principal lookup by tag at scale: after warm-up, one IAM call per request (the check of
the principal itself), counted by the throttling proxy in front of moto; changed tags are
picked up as bot.aws.principal_index documents."""

from __future__ import annotations

import random
import threading
from typing import Any

import boto3
import pytest
from aws_testkit import REGION, MotoIamSeed
from throttling_iam import ThrottlingIamProxy

from bot.aws.principal_index import SLACK_USER_TAG, PrincipalIndex
from bot.aws.principals import IamPrincipalDirectory
from bot.aws.sessions import AwsSessions
from bot.ports import PrincipalError

pytestmark = pytest.mark.slow
ROLES, USERS = 300, 40


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Account:
    """300 roles and 40 users in moto, every tenth tagged for a Slack user of its own."""

    def __init__(self, moto_url: str) -> None:
        self.tag = f"{random.randrange(16**6):06x}"
        self.iam = boto3.client("iam", region_name=REGION, endpoint_url=moto_url)
        seed = MotoIamSeed()
        self.role_of: dict[str, str] = {}
        self.user_of: dict[str, str] = {}

        def make_role(i: int) -> None:
            name = f"idx-{self.tag}-r{i:04d}"
            tags = [{"Key": SLACK_USER_TAG, "Value": self.slack_id("R", i)}] if i % 10 == 0 else []
            seed.role(name, tags)
            if tags:
                self.role_of[self.slack_id("R", i)] = name

        def make_user(i: int) -> None:
            name = f"idx-{self.tag}-u{i:04d}"
            tags = [{"Key": SLACK_USER_TAG, "Value": self.slack_id("S", i)}] if i % 10 == 0 else []
            seed.user(name, tags)
            if tags:
                self.user_of[self.slack_id("S", i)] = name

        # Into moto's backend, one at a time (MotoIamSeed): 340 HTTP creates took about
        # 15 s of each test's set-up on a loaded 2-core machine.
        for i in range(ROLES):
            make_role(i)
        for i in range(USERS):
            make_user(i)

    def slack_id(self, kind: str, i: int) -> str:
        return f"U{kind}{self.tag.upper()}{i:04d}"

    def role_arn(self, name: str) -> str:
        return f"arn:aws:iam::123456789012:role/{name}"


@pytest.fixture
def account(moto_url: str, fake_aws_credentials: None) -> Account:
    return Account(moto_url)


def directory(proxy: ThrottlingIamProxy, clock: ManualClock, **options: Any
              ) -> IamPrincipalDirectory:
    aws = AwsSessions(REGION, proxy.url, max_attempts=1)
    index = PrincipalIndex(aws.iam_for_account, max_age=600, miss_refresh=30,
                           background=False, clock=clock)
    return IamPrincipalDirectory(aws.iam_for_account, {}, tag_lookup=True, index=index,
                                 **options)


def calls(proxy: ThrottlingIamProxy) -> dict[str, int]:
    counts = dict(proxy.counts.requests)
    proxy.reset()
    return counts


def test_after_warm_up_each_lookup_makes_one_iam_call(
    proxy: ThrottlingIamProxy, account: Account
) -> None:
    people = directory(proxy, ManualClock())
    tagged = {**{u: account.role_arn(r) for u, r in account.role_of.items()},
              **{u: f"arn:aws:iam::123456789012:user/{n}" for u, n in account.user_of.items()}}
    first, *rest = sorted(tagged)

    assert people.principal_for(first) == tagged[first]
    # Warm-up: one scan (a page per thousand principals), then the check of the principal.
    assert calls(proxy) == {"GetAccountAuthorizationDetails": 1,
                            "GetRole" if "role" in tagged[first] else "GetUser": 1}

    for slack_id in rest:
        assert people.principal_for(slack_id) == tagged[slack_id]
        made = calls(proxy)
        assert sum(made.values()) == 1, made
        assert set(made) <= {"GetRole", "GetUser"}
    assert people.index is not None and people.index.refreshes == 1
    assert len(rest) == ROLES // 10 + USERS // 10 - 1


def test_a_moved_tag_is_followed_at_once_and_a_new_one_within_the_miss_refresh(
    proxy: ThrottlingIamProxy, account: Account
) -> None:
    clock = ManualClock()
    people = directory(proxy, clock)
    alice = account.slack_id("R", 0)
    old_role, new_role = account.role_of[alice], f"idx-{account.tag}-r0001"
    assert people.principal_for(alice) == account.role_arn(old_role)

    # The tag moves to another role: the check of the old role sees it gone, the index
    # rescans once and the new role is found, in the same request.
    account.iam.untag_role(RoleName=old_role, TagKeys=[SLACK_USER_TAG])
    account.iam.tag_role(RoleName=new_role, Tags=[{"Key": SLACK_USER_TAG, "Value": alice}])
    calls(proxy)
    assert people.principal_for(alice) == account.role_arn(new_role)
    assert calls(proxy) == {"GetRole": 2, "GetAccountAuthorizationDetails": 1}

    # A brand-new tag right after a scan: a miss inside miss_refresh costs no IAM call...
    bob = f"UNEW{account.tag.upper()}"
    account.iam.tag_role(RoleName=f"idx-{account.tag}-r0002",
                         Tags=[{"Key": SLACK_USER_TAG, "Value": bob}])
    with pytest.raises(PrincipalError, match="No IAM principal is set up"):
        people.principal_for(bob)
    assert calls(proxy) == {}
    # ...and once it has passed, the miss rescans and finds it.
    clock.now += 30
    assert people.principal_for(bob) == account.role_arn(f"idx-{account.tag}-r0002")
    assert calls(proxy) == {"GetAccountAuthorizationDetails": 1, "GetRole": 1}


def test_a_second_principal_for_the_same_person_is_found_within_max_age(
    proxy: ThrottlingIamProxy, account: Account
) -> None:
    clock = ManualClock()
    people = directory(proxy, clock)
    carol = account.slack_id("R", 10)
    people.principal_for(carol)
    account.iam.tag_role(RoleName=f"idx-{account.tag}-r0011",
                         Tags=[{"Key": SLACK_USER_TAG, "Value": carol}])
    calls(proxy)

    people.principal_for(carol)  # the index does not know yet: still one call
    assert sum(calls(proxy).values()) == 1
    clock.now += 600
    with pytest.raises(PrincipalError, match="2 IAM principals are tagged"):
        people.principal_for(carol)


def test_a_throttled_scan_is_a_clear_message_and_the_next_request_scans_again(
    proxy: ThrottlingIamProxy, account: Account
) -> None:
    people = directory(proxy, ManualClock())
    dave = account.slack_id("R", 20)
    proxy.set_rate(0)

    with pytest.raises(PrincipalError, match="try again in a minute"):
        people.principal_for(dave)

    proxy.set_rate(None)
    assert people.principal_for(dave) == account.role_arn(account.role_of[dave])


def test_the_managed_tag_is_read_from_the_same_single_call(
    proxy: ThrottlingIamProxy, account: Account
) -> None:
    people = directory(proxy, ManualClock(), require_managed_tag=True)
    erin = account.slack_id("R", 30)
    role = account.role_of[erin]
    with pytest.raises(PrincipalError, match="connect-access:managed=true"):
        people.principal_for(erin)
    account.iam.tag_role(RoleName=role, Tags=[{"Key": "connect-access:managed", "Value": "true"}])
    calls(proxy)

    assert people.principal_for(erin) == account.role_arn(role)
    assert calls(proxy) == {"GetRole": 1}


def test_past_max_age_the_index_serves_what_it_has_and_rescans_in_the_background(
    proxy: ThrottlingIamProxy, account: Account
) -> None:
    clock = ManualClock()
    aws = AwsSessions(REGION, proxy.url, max_attempts=1)
    index = PrincipalIndex(aws.iam_for_account, max_age=600, miss_refresh=30, clock=clock)
    frank = account.slack_id("R", 50)
    assert index.lookup(frank) == (account.role_arn(account.role_of[frank]),)
    calls(proxy)
    clock.now += 600

    assert index.lookup(frank) == (account.role_arn(account.role_of[frank]),)

    for _ in range(100):  # the rescan runs on its own thread; wait for it, not for time
        if index.refreshes == 2:
            break
        threading.Event().wait(0.05)
    assert index.refreshes == 2
    assert calls(proxy) == {"GetAccountAuthorizationDetails": 1}
