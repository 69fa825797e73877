"""IAM list answers in several pages (tests/throttling_iam.py's `page_size`), so the bot's
multi-page paths run against truncated answers, as on a real account: moto alone answers
GetAccountAuthorizationDetails and most List* calls whole.

Page positions are not assumed: each test first walks the pages itself and checks that
what it planted sits on the third page or later."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from aws_testkit import HOME_ACCOUNT, REGION, TRUST, connect_document
from doubles import InMemoryReconcileStore
from throttling_iam import MOTO_PAGED, PROXY_PAGED, ThrottlingIamProxy

from bot.aws.granter import MANAGED_PATH, IamGranter
from bot.aws.principal_index import SLACK_USER_TAG, PrincipalIndex
from bot.aws.principals import IamPrincipalDirectory, tagged_principals
from bot.aws.reconcile import reconcile
from bot.aws.sessions import AwsSessions
from bot.reconcile_model import Finding

pytestmark = pytest.mark.slow
DOCUMENT = json.dumps(connect_document())
OTHER_DOCUMENT = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]})


def role_arn(name: str) -> str:
    return f"arn:aws:iam::{HOME_ACCOUNT}:role/{name}"


class Fixture:
    """A role, a user and a group with three of everything the bot lists (and three more
    roles, users and groups), and a managed policy with three versions; names unique to
    the test (moto's state is shared)."""

    def __init__(self, iam: Any) -> None:
        tag = f"{random.randrange(16**6):06x}"
        # Under a path of their own, so the account-wide lists below list only these,
        # however many roles other tests left in this worker's moto.
        self.path = path = f"/pg-{tag}/"
        self.role, self.user, self.group = f"pg-{tag}-r", f"pg-{tag}-u", f"pg-{tag}-g"
        iam.create_role(RoleName=self.role, AssumeRolePolicyDocument=TRUST, Path=path,
                        Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(3)])
        iam.create_user(UserName=self.user, Path=path,
                        Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(3)])
        iam.create_group(GroupName=self.group, Path=path)
        for i in range(3):
            iam.create_role(RoleName=f"{self.role}{i}", AssumeRolePolicyDocument=TRUST,
                            Path=path)
            iam.create_user(UserName=f"{self.user}{i}", Path=path)
            iam.create_group(GroupName=f"{self.group}{i}", Path=path)
            iam.add_user_to_group(GroupName=self.group, UserName=f"{self.user}{i}")
            iam.add_user_to_group(GroupName=f"{self.group}{i}", UserName=self.user)
            iam.put_role_policy(RoleName=self.role, PolicyName=f"p{i}", PolicyDocument=DOCUMENT)
            iam.put_user_policy(UserName=self.user, PolicyName=f"p{i}", PolicyDocument=DOCUMENT)
            iam.put_group_policy(GroupName=self.group, PolicyName=f"p{i}",
                                 PolicyDocument=DOCUMENT)
            arn = iam.create_policy(PolicyName=f"pg-{tag}-m{i}", Path=f"/pg-{tag}/",
                                    PolicyDocument=DOCUMENT)["Policy"]["Arn"]
            iam.attach_role_policy(RoleName=self.role, PolicyArn=arn)
            iam.attach_user_policy(UserName=self.user, PolicyArn=arn)
            iam.attach_group_policy(GroupName=self.group, PolicyArn=arn)
        self.policy_arn = arn
        for _ in range(2):
            iam.create_policy_version(PolicyArn=arn, PolicyDocument=OTHER_DOCUMENT)

    def calls(self) -> dict[str, tuple[dict[str, Any], str]]:
        """operation -> (parameters, the list it pages) for every list call paged here."""
        return {
            "get_account_authorization_details": ({}, "RoleDetailList"),
            "list_roles": ({"PathPrefix": self.path}, "Roles"),
            "list_users": ({"PathPrefix": self.path}, "Users"),
            "list_groups": ({"PathPrefix": self.path}, "Groups"),
            "list_role_policies": ({"RoleName": self.role}, "PolicyNames"),
            "list_user_policies": ({"UserName": self.user}, "PolicyNames"),
            "list_group_policies": ({"GroupName": self.group}, "PolicyNames"),
            "list_attached_role_policies": ({"RoleName": self.role}, "AttachedPolicies"),
            "list_attached_user_policies": ({"UserName": self.user}, "AttachedPolicies"),
            "list_attached_group_policies": ({"GroupName": self.group}, "AttachedPolicies"),
            "list_policies": ({"Scope": "Local", "PathPrefix": self.path}, "Policies"),
            "list_policy_versions": ({"PolicyArn": self.policy_arn}, "Versions"),
            "list_groups_for_user": ({"UserName": self.user}, "Groups"),
            "get_group": ({"GroupName": self.group}, "Users"),
            "list_role_tags": ({"RoleName": self.role}, "Tags"),
            "list_user_tags": ({"UserName": self.user}, "Tags"),
        }


DETAIL_LISTS = ("UserDetailList", "GroupDetailList", "RoleDetailList", "Policies")


def items(operation: str, answer: dict[str, Any], key: str) -> list[Any]:
    """The items of a list answer (GetAccountAuthorizationDetails': all four lists)."""
    keys = DETAIL_LISTS if operation == "get_account_authorization_details" else (key,)
    return [item for k in keys for item in answer.get(k, [])]


def action_of(operation: str) -> str:
    return "".join(part.title() for part in operation.split("_"))


@pytest.fixture
def iam(moto_url: str, fake_aws_credentials: None) -> Any:
    return boto3.client("iam", region_name=REGION, endpoint_url=moto_url)


def test_moto_pages_only_the_calls_the_proxy_leaves_to_it(iam: Any) -> None:
    """The check behind PROXY_PAGED and MOTO_PAGED: asked for one item, moto answers the
    first ones whole and pages the second ones itself."""
    fixture = Fixture(iam)
    calls = fixture.calls()
    assert {action_of(op) for op in calls} == set(PROXY_PAGED) | MOTO_PAGED
    for operation, (params, key) in calls.items():
        answer = getattr(iam, operation)(MaxItems=1, **params)
        got = items(operation, answer, key)
        if action_of(operation) in MOTO_PAGED:
            assert len(got) == 1 and answer["IsTruncated"], operation
        else:
            assert len(got) > 1 and not answer.get("IsTruncated"), operation


def test_each_list_call_walks_several_pages_to_exactly_what_moto_holds(
    proxy: ThrottlingIamProxy, iam: Any
) -> None:
    fixture = Fixture(iam)
    paged: Any = boto3.client("iam", region_name=REGION, endpoint_url=proxy.url)
    proxy.set_page_size(2)
    for operation, (params, key) in fixture.calls().items():
        everything = items(operation, getattr(iam, operation)(**params), key)
        proxy.reset()
        pages = list(paged.get_paginator(operation).paginate(**params))
        walked = [item for page in pages for item in items(operation, page, key)]
        assert walked == everything, operation  # nothing lost, nothing twice, in order
        # moto's own pagers (ListRoles among them) answer one empty page after a last page
        # that is exactly full, so how many pages there are depends on the parity of what
        # the shared moto server holds: count the pages that carry items.
        filled = [p for p in pages if items(operation, p, key)]
        assert len(filled) == -(-len(everything) // 2) >= 2, operation
        assert len(pages) - len(filled) <= 1 and pages[: len(filled)] == filled, operation
        assert all(len(items(operation, p, key)) <= 2 for p in pages), operation
        records = proxy.records(action_of(operation))
        assert len(records) == len(pages), operation
        markers = [r.params.get("Marker") for r in records]
        assert markers[0] is None and None not in markers[1:], operation
        assert len(set(markers)) == len(markers), operation


def test_a_smaller_max_items_wins_and_a_foreign_marker_is_refused(
    proxy: ThrottlingIamProxy, iam: Any
) -> None:
    fixture = Fixture(iam)
    paged: Any = boto3.client("iam", region_name=REGION, endpoint_url=proxy.url)
    proxy.set_page_size(50)
    first = paged.list_role_policies(RoleName=fixture.role, MaxItems=1)
    assert first["PolicyNames"] == ["p0"] and first["IsTruncated"]
    rest = paged.list_role_policies(RoleName=fixture.role, Marker=first["Marker"])
    assert rest["PolicyNames"] == ["p1", "p2"] and not rest["IsTruncated"]
    with pytest.raises(paged.exceptions.ClientError, match="Invalid Marker"):
        paged.list_role_policies(RoleName=fixture.role, Marker="not-a-marker")
    proxy.set_page_size(None)
    assert paged.list_role_policies(RoleName=fixture.role, MaxItems=1)["PolicyNames"] == [
        "p0", "p1", "p2"]  # paging off: moto's own answer
    with pytest.raises(ValueError, match="ListRoleTags2"):
        proxy.set_page_size(2, ["ListRoleTags2"])


# -- the bot over paged answers -----------------------------------------------------------


def page_holding(proxy: ThrottlingIamProxy, filters: list[str],
                 found: Callable[[dict[str, Any]], bool]) -> int:
    """1-based number of the GetAccountAuthorizationDetails page (at the proxy's current
    page size) holding an entity for which `found` is true."""
    client: Any = boto3.client("iam", region_name=REGION, endpoint_url=proxy.url)
    pages = client.get_paginator("get_account_authorization_details").paginate(
        Filter=filters)
    for number, page in enumerate(pages, 1):
        if any(found(item) for item in items("get_account_authorization_details", page, "")):
            return number
    raise AssertionError("not on any page")


def make_roles(iam: Any, prefix: str, count: int) -> list[str]:
    names = [f"{prefix}-{i:03d}" for i in range(count)]
    for name in names:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)
    return names


def test_the_principal_index_finds_a_principal_on_the_third_page_or_later(
    proxy: ThrottlingIamProxy, iam: Any
) -> None:
    tag = f"{random.randrange(16**6):06x}"
    make_roles(iam, f"pgi-{tag}", 30)
    slack_id = f"UPG{tag.upper()}"
    last = f"pgi-{tag}-tagged"
    iam.create_role(RoleName=last, AssumeRolePolicyDocument=TRUST,
                    Tags=[{"Key": SLACK_USER_TAG, "Value": slack_id}])
    proxy.set_page_size(10)
    page = page_holding(proxy, ["Role", "User"], lambda d: d.get("RoleName") == last)
    assert page >= 3
    proxy.reset()

    aws = AwsSessions(REGION, proxy.url, max_attempts=1)
    index = PrincipalIndex(aws.iam_for_account, background=False)
    people = IamPrincipalDirectory(aws.iam_for_account, {}, tag_lookup=True, index=index)

    assert people.principal_for(slack_id) == role_arn(last)
    scans = proxy.records("GetAccountAuthorizationDetails")
    # It read every page, page by page (a Marker each time after the first), once.
    assert len(scans) >= page >= 3 and index.refreshes == 1
    assert [r.params.get("Marker") is None for r in scans] == [True] + [False] * (len(scans) - 1)
    assert proxy.counts.requests["GetRole"] == 1  # the check of the principal found
    # The same paged read serves reconcile's list of tagged principals.
    proxy.reset()
    assert role_arn(last) in {arn for arn, _ in tagged_principals(aws.iam())}
    assert proxy.counts.requests["GetAccountAuthorizationDetails"] == len(scans)


def orphans(findings: list[Finding]) -> set[tuple[str, str, str]]:
    return {(f.principal_arn, f.policy_kind, f.policy_name) for f in findings
            if f.kind == "orphan" and f.applied and not f.error}


def test_reconcile_removes_orphans_of_principals_only_on_later_pages(
    proxy: ThrottlingIamProxy, iam: Any
) -> None:
    tag = f"{random.randrange(16**6):06x}"
    early = make_roles(iam, f"pgr-{tag}", 30)
    # Known only by its tag (as reconcile_job finds tagged principals), created last.
    late = f"pgr-{tag}-late"
    iam.create_role(RoleName=late, AssumeRolePolicyDocument=TRUST,
                    Tags=[{"Key": SLACK_USER_TAG, "Value": f"UPGR{tag.upper()}"}])
    inline = f"connect-access-pgr{tag}i"
    iam.put_role_policy(RoleName=late, PolicyName=inline, PolicyDocument=DOCUMENT)
    managed = f"connect-access-pgr{tag}m"
    managed_arn = iam.create_policy(PolicyName=managed, Path=MANAGED_PATH,
                                    PolicyDocument=DOCUMENT)["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=late, PolicyArn=managed_arn)
    proxy.set_page_size(10)
    filters = ["Role", "User", "Group", "LocalManagedPolicy"]
    role_page = page_holding(proxy, filters, lambda d: d.get("RoleName") == late)
    policy_page = page_holding(proxy, filters, lambda d: d.get("Arn") == managed_arn)
    assert role_page >= 3 and policy_page >= 3
    proxy.reset()

    aws = AwsSessions(REGION, proxy.url, max_attempts=1)
    tagged = [arn for arn, _ in tagged_principals(aws.iam()) if f"pgr-{tag}" in arn]
    assert tagged == [role_arn(late)]
    store = InMemoryReconcileStore(principals=[role_arn(n) for n in early[:3]])
    proxy.reset()

    findings = reconcile(IamGranter(aws.iam_for_principal), store, now=datetime.now(UTC),
                         extra_principals=tagged)

    assert {(role_arn(late), "inline", inline), (role_arn(late), "managed", managed)} \
        <= orphans(findings)
    assert not any(f.kind == "unchecked" for f in findings)
    assert iam.list_role_policies(RoleName=late)["PolicyNames"] == []
    assert iam.list_attached_role_policies(RoleName=late)["AttachedPolicies"] == []
    reads = proxy.records("GetAccountAuthorizationDetails")
    assert len(reads) >= max(role_page, policy_page)  # every page of the account, once
    assert sum(r.params.get("Marker") is None for r in reads) == 1
    # The one-pass read was enough: nobody was listed principal by principal.
    assert proxy.counts.requests["ListRolePolicies"] == 0


def test_reconcile_principal_by_principal_pages_every_list(
    proxy: ThrottlingIamProxy, iam: Any
) -> None:
    tag = f"{random.randrange(16**6):06x}"
    name = f"pgf-{tag}"
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST)
    # Seven inline policies of someone else's, then the bot's orphan: on the fourth page
    # of ListRolePolicies at two a page.
    for i in range(7):
        iam.put_role_policy(RoleName=name, PolicyName=f"team-{i}", PolicyDocument=DOCUMENT)
    inline = f"connect-access-pgf{tag}i"
    iam.put_role_policy(RoleName=name, PolicyName=inline, PolicyDocument=DOCUMENT)
    # Likewise five attached managed policies under the bot's path but not the bot's (it
    # lists that path only), then the bot's orphan.
    others = []
    for i in range(5):
        arn = iam.create_policy(PolicyName=f"pgf-{tag}-team-{i}", Path=MANAGED_PATH,
                                PolicyDocument=DOCUMENT)["Policy"]["Arn"]
        iam.attach_role_policy(RoleName=name, PolicyArn=arn)
        others.append(arn)
    managed = f"connect-access-pgf{tag}m"
    managed_arn = iam.create_policy(PolicyName=managed, Path=MANAGED_PATH,
                                    PolicyDocument=DOCUMENT)["Policy"]["Arn"]
    # A revoke that died between detach and delete left these attached to nothing.
    detached = [f"connect-access-pgf{tag}d{i}" for i in range(5)]
    for policy in detached:
        iam.create_policy(PolicyName=policy, Path=MANAGED_PATH, PolicyDocument=DOCUMENT)
    iam.attach_role_policy(RoleName=name, PolicyArn=managed_arn)
    proxy.set_page_size(2)
    # IAM refuses the one-pass read (an older bot policy, or its budget used up).
    proxy.always_throttle = lambda action, _p: action == "GetAccountAuthorizationDetails"
    aws = AwsSessions(REGION, proxy.url, max_attempts=1)
    store = InMemoryReconcileStore(principals=[role_arn(name)])
    proxy.reset()

    findings = reconcile(IamGranter(aws.iam_for_principal), store, now=datetime.now(UTC))

    assert {(role_arn(name), "inline", inline), (role_arn(name), "managed", managed),
            *((role_arn(name), "managed", d) for d in detached)} <= orphans(findings)
    assert not any(f.kind == "unchecked" for f in findings)
    assert iam.list_role_policies(RoleName=name)["PolicyNames"] == [f"team-{i}"
                                                                    for i in range(7)]
    assert [p["PolicyArn"] for p in
            iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]] == others
    left = {p["PolicyName"] for p in
            iam.list_policies(Scope="Local", PathPrefix=MANAGED_PATH)["Policies"]}
    assert left.isdisjoint({managed, *detached})

    def pages(action: str) -> list[str | None]:
        return [r.params.get("Marker") for r in proxy.records(action)
                if r.params.get("RoleName", name) == name]

    # Each list was read page by page: 8 inline names at two a page, 6 attached policies,
    # and the account's detached policies (5 of ours, at least).
    listed = pages("ListRolePolicies")
    assert listed.count(None) == 1 and len(listed) == 4
    # Read, and read again before removing: three pages each at least (moto, paging this
    # one itself, adds an empty fourth when the last page is full).
    attached = pages("ListAttachedRolePolicies")
    assert attached.count(None) == 2 and len(attached) >= 6
    assert len(pages("ListPolicies")) >= 3
    assert proxy.counts.throttled["GetAccountAuthorizationDetails"] == 1
