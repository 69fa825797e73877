"""IamGranter against moto: attach, read back, revoke, idempotency, other accounts."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from aws_testkit import (
    HOME_ACCOUNT,
    OTHER_ACCOUNT,
    OTHER_INSTANCE,
    WriteCounter,
    connect_document,
    make_plan,
    make_principal,
)

from bot.aws.granter import (
    EXPIRES_AT_TAG,
    GRANT_ID_TAG,
    IamGranter,
    decode_document,
    document_hash,
    iam_policy_size,
)
from bot.aws.principals import IamPrincipalDirectory
from bot.aws.sessions import AwsSessions
from bot.ports import Granter, GrantError, PolicyKind, PrincipalDirectory, PrincipalError

KINDS = ["role", "user", "group"]


def inline_names(iam: Any, kind: str, name: str) -> list[str]:
    method = getattr(iam, f"list_{kind}_policies")
    return list(method(**{f"{kind.capitalize()}Name": name})["PolicyNames"])


def attached_arns(iam: Any, kind: str, name: str) -> list[str]:
    method = getattr(iam, f"list_attached_{kind}_policies")
    result = method(**{f"{kind.capitalize()}Name": name})["AttachedPolicies"]
    return [p["PolicyArn"] for p in result]


def local_policy_names(iam: Any) -> list[str]:
    return [p["PolicyName"] for p in iam.list_policies(Scope="Local")["Policies"]]


@pytest.mark.parametrize("kind", KINDS)
def test_inline_attach_puts_the_document_and_revoke_removes_it(
    granter: IamGranter, iam: Any, kind: str
) -> None:
    arn = make_principal(iam, kind, f"alice-{kind}")
    plan = make_plan(arn, "inline", grant_id="g1")

    attached = granter.attach(plan)

    assert [a.name for a in attached] == ["connect-access-g1"]
    assert attached[0].arn is None
    assert attached[0].document_hash == document_hash(connect_document())
    get = getattr(iam, f"get_{kind}_policy")
    stored = get(**{f"{kind.capitalize()}Name": f"alice-{kind}"}, PolicyName="connect-access-g1")
    assert stored["PolicyDocument"] == connect_document()

    granter.revoke(arn, "inline", ["connect-access-g1"])

    assert inline_names(iam, kind, f"alice-{kind}") == []


@pytest.mark.parametrize("kind", KINDS)
def test_managed_attach_creates_tagged_policy_and_revoke_deletes_it(
    granter: IamGranter, iam: Any, kind: str
) -> None:
    arn = make_principal(iam, kind, f"bob-{kind}")
    plan = make_plan(arn, "managed", grant_id="g2")

    attached = granter.attach(plan)

    policy_arn = f"arn:aws:iam::{HOME_ACCOUNT}:policy/connect-access/connect-access-g2"
    assert attached[0].arn == policy_arn
    assert attached_arns(iam, kind, f"bob-{kind}") == [policy_arn]
    policy = iam.get_policy(PolicyArn=policy_arn)["Policy"]
    assert policy["Path"] == "/connect-access/"
    tags = {t["Key"]: t["Value"] for t in iam.list_policy_tags(PolicyArn=policy_arn)["Tags"]}
    assert tags[GRANT_ID_TAG] == "g2"
    assert tags[EXPIRES_AT_TAG] == plan.expires_at.isoformat()

    granter.revoke(arn, "managed", ["connect-access-g2"])

    assert attached_arns(iam, kind, f"bob-{kind}") == []
    assert "connect-access-g2" not in local_policy_names(iam)


@pytest.mark.parametrize("policy_kind", ["inline", "managed"])
def test_attaching_the_same_plan_twice_changes_nothing(
    granter: IamGranter, iam: Any, writes: WriteCounter, policy_kind: PolicyKind
) -> None:
    arn = make_principal(iam, "role", "carol")
    plan = make_plan(arn, policy_kind, grant_id="g3")
    first = granter.attach(plan)
    writes.calls.clear()

    second = granter.attach(plan)

    assert second == first
    assert writes.calls == []


@pytest.mark.parametrize("policy_kind", ["inline", "managed"])
def test_revoking_twice_or_never_attached_is_success(
    granter: IamGranter, iam: Any, policy_kind: PolicyKind
) -> None:
    arn = make_principal(iam, "user", "dave")
    granter.attach(make_plan(arn, policy_kind, grant_id="g4"))

    granter.revoke(arn, policy_kind, ["connect-access-g4"])
    granter.revoke(arn, policy_kind, ["connect-access-g4"])
    granter.revoke(arn, policy_kind, ["connect-access-never"])

    assert inline_names(iam, "user", "dave") == []
    assert attached_arns(iam, "user", "dave") == []


def test_extending_a_managed_grant_adds_a_version_and_revoke_deletes_them_all(
    granter: IamGranter, iam: Any
) -> None:
    arn = make_principal(iam, "role", "erin")
    name = "connect-access-g5"
    # Seven updates: more than IAM's five versions, so the oldest must be pruned.
    for marker in "abcdefg":
        granter.attach(make_plan(arn, "managed", "g5", {name: connect_document(marker)}))

    policy_arn = f"arn:aws:iam::{HOME_ACCOUNT}:policy/connect-access/{name}"
    versions = iam.list_policy_versions(PolicyArn=policy_arn)["Versions"]
    assert len(versions) == 5
    default = next(v for v in versions if v["IsDefaultVersion"])
    document = iam.get_policy_version(PolicyArn=policy_arn, VersionId=default["VersionId"])
    assert document["PolicyVersion"]["Document"] == connect_document("g")

    granter.revoke(arn, "managed", [name])

    assert name not in local_policy_names(iam)


def test_a_multi_policy_plan_attaches_every_policy(granter: IamGranter, iam: Any) -> None:
    arn = make_principal(iam, "role", "frank")
    plan = make_plan(
        arn,
        "inline",
        "g6",
        {
            "connect-access-g6-1": connect_document("x"),
            "connect-access-g6-2": connect_document("y"),
        },
    )

    attached = granter.attach(plan)

    assert [a.name for a in attached] == ["connect-access-g6-1", "connect-access-g6-2"]
    assert sorted(inline_names(iam, "role", "frank")) == [
        "connect-access-g6-1",
        "connect-access-g6-2",
    ]


def test_policy_names_outside_the_bots_prefix_are_refused(granter: IamGranter, iam: Any) -> None:
    arn = make_principal(iam, "role", "grace")
    iam.put_role_policy(
        RoleName="grace", PolicyName="admins-own", PolicyDocument=json.dumps(connect_document())
    )

    with pytest.raises(GrantError) as attach_error:
        granter.attach(make_plan(arn, "inline", "g7", {"admins-own": connect_document()}))
    with pytest.raises(GrantError) as revoke_error:
        granter.revoke(arn, "inline", ["admins-own"])

    assert attach_error.value.code == revoke_error.value.code == "InvalidPolicyName"
    assert not attach_error.value.transient
    assert inline_names(iam, "role", "grace") == ["admins-own"]


def test_inline_usage_counts_other_policies_without_whitespace(
    granter: IamGranter, iam: Any
) -> None:
    arn = make_principal(iam, "role", "heidi")
    other = connect_document("other")
    iam.put_role_policy(
        RoleName="heidi", PolicyName="hand-made", PolicyDocument=json.dumps(other, indent=4)
    )
    granter.attach(make_plan(arn, "inline", "g8"))

    usage = granter.inline_usage(arn, exclude=["connect-access-g8"])
    everything = granter.inline_usage(arn)

    assert usage == iam_policy_size(other)
    assert everything == iam_policy_size(other) + iam_policy_size(connect_document())
    assert usage == len("".join(json.dumps(other).split()))


def test_documents_come_back_equal_whether_decoded_or_url_encoded() -> None:
    document = connect_document()
    raw = quote(json.dumps(document, indent=2))

    assert decode_document(raw) == document
    assert decode_document(json.dumps(document)) == document
    assert document_hash(decode_document(raw)) == document_hash(
        json.loads(json.dumps(document, indent=1))
    )


def test_grants_in_another_account_go_through_assume_role(
    sessions: AwsSessions, granter: IamGranter
) -> None:
    other_iam = sessions.iam(OTHER_INSTANCE)
    arn = make_principal(other_iam, "role", "remote-agent")
    assert f":{OTHER_ACCOUNT}:" in arn

    granter.attach(make_plan(arn, "inline", "g9"))
    granter.attach(make_plan(arn, "managed", "g10"))

    assert inline_names(other_iam, "role", "remote-agent") == ["connect-access-g9"]
    assert attached_arns(other_iam, "role", "remote-agent") == [
        f"arn:aws:iam::{OTHER_ACCOUNT}:policy/connect-access/connect-access-g10"
    ]
    # The home account holds nothing of it.
    home_iam = sessions.iam()
    assert "connect-access-g10" not in local_policy_names(home_iam)
    assert sessions.assume_role_calls == 1  # credentials cached across calls

    granter.revoke(arn, "inline", ["connect-access-g9"])
    granter.revoke(arn, "managed", ["connect-access-g10"])
    assert inline_names(other_iam, "role", "remote-agent") == []
    assert local_policy_names(other_iam) == []


def test_the_adapters_implement_the_ports(sessions: AwsSessions, granter: IamGranter) -> None:
    # Typed assignments: mypy --strict checks the signatures against bot.ports.
    port: Granter = granter
    directory: PrincipalDirectory = IamPrincipalDirectory(sessions.iam_for_account, {})

    assert port.inline_usage(make_principal(sessions.iam(), "role", "ports")) == 0
    with pytest.raises(PrincipalError):
        directory.principal_for("U0NOBODY")
