"""IamPrincipalDirectory against moto: mapping, tag lookup, and every refusal."""

from __future__ import annotations

from typing import Any

import pytest
from aws_testkit import HOME_ACCOUNT, OTHER_INSTANCE, make_principal

from bot.aws.principals import IamPrincipalDirectory, parse_principal_arn
from bot.aws.sessions import AwsSessions, account_of
from bot.ports import PrincipalError

MANAGED = {"connect-access:managed": "true"}


def directory(
    sessions: AwsSessions, mapping: dict[str, str] | None = None, **options: Any
) -> IamPrincipalDirectory:
    return IamPrincipalDirectory(sessions.iam_for_account, mapping or {}, **options)


def test_a_mapped_role_is_returned(sessions: AwsSessions, iam: Any) -> None:
    arn = make_principal(iam, "role", "alice-admin")

    assert directory(sessions, {"U1": arn}).principal_for("U1") == arn


def test_a_mapped_group_is_a_target_only_when_groups_are_allowed(
    sessions: AwsSessions, iam: Any
) -> None:
    arn = make_principal(iam, "group", "contact-center-admins")

    assert directory(sessions, {"U1": arn},
                     allow_group_targets=True).principal_for("U1") == arn
    with pytest.raises(PrincipalError, match="reaches every member"):
        directory(sessions, {"U1": arn}).principal_for("U1")


def test_group_member_count_counts_the_iam_users_in_the_group(
    sessions: AwsSessions, iam: Any
) -> None:
    arn = make_principal(iam, "group", "contact-center-admins")
    for name in ("ann", "ben", "cat"):
        iam.create_user(UserName=name)
        iam.add_user_to_group(GroupName="contact-center-admins", UserName=name)

    assert directory(sessions, allow_group_targets=True).group_member_count(arn) == 3
    with pytest.raises(PrincipalError, match="Could not read the members"):
        directory(sessions).group_member_count(f"arn:aws:iam::{HOME_ACCOUNT}:group/gone")


def test_a_shared_role_with_a_session_is_checked_as_its_role(
    sessions: AwsSessions, iam: Any
) -> None:
    role = make_principal(iam, "role", "ConnectAdmins")
    ref = f"{role};session=bob@example.com"

    assert directory(sessions, {"U1": ref}).principal_for("U1") == ref
    with pytest.raises(PrincipalError, match="does not exist"):
        directory(sessions, {"U1": f"arn:aws:iam::{HOME_ACCOUNT}:role/Gone;session=bob"}
                  ).principal_for("U1")


def test_a_mapped_principal_in_another_account_is_checked_there(sessions: AwsSessions) -> None:
    arn = make_principal(sessions.iam(OTHER_INSTANCE), "user", "remote-bob")

    assert directory(sessions, {"U2": arn}).principal_for("U2") == arn
    assert account_of(arn) != HOME_ACCOUNT


def test_tag_lookup_finds_the_tagged_role_or_user(sessions: AwsSessions, iam: Any) -> None:
    make_principal(iam, "role", "untagged")
    role = make_principal(iam, "role", "carol", {"connect-access:slack-user": "U3"})
    user = make_principal(iam, "user", "dave", {"connect-access:slack-user": "U4"})
    found = directory(sessions, tag_lookup=True)

    assert found.principal_for("U3") == role
    assert found.principal_for("U4") == user


def test_the_mapping_wins_over_tags(sessions: AwsSessions, iam: Any) -> None:
    make_principal(iam, "role", "tagged", {"connect-access:slack-user": "U5"})
    mapped = make_principal(iam, "role", "mapped")

    assert directory(sessions, {"U5": mapped}, tag_lookup=True).principal_for("U5") == mapped


def test_unknown_users_are_told_how_to_get_set_up(sessions: AwsSessions) -> None:
    with pytest.raises(PrincipalError, match="No IAM principal is set up for Slack user U9"):
        directory(sessions).principal_for("U9")
    with pytest.raises(PrincipalError, match="connect-access:slack-user=U9"):
        directory(sessions, tag_lookup=True).principal_for("U9")


def test_two_principals_tagged_for_one_user_are_refused(sessions: AwsSessions, iam: Any) -> None:
    make_principal(iam, "role", "one", {"connect-access:slack-user": "U6"})
    make_principal(iam, "user", "two", {"connect-access:slack-user": "U6"})

    with pytest.raises(PrincipalError, match="2 IAM principals are tagged"):
        directory(sessions, tag_lookup=True).principal_for("U6")


def test_service_linked_roles_are_refused(sessions: AwsSessions, iam: Any) -> None:
    arn = iam.create_service_linked_role(AWSServiceName="connect.amazonaws.com")["Role"]["Arn"]

    with pytest.raises(PrincipalError, match="service-linked role"):
        directory(sessions, {"U1": arn}).principal_for("U1")


def test_principals_that_do_not_exist_are_refused(sessions: AwsSessions) -> None:
    for kind in ("role", "user", "group"):
        arn = f"arn:aws:iam::{HOME_ACCOUNT}:{kind}/ghost"
        with pytest.raises(PrincipalError, match=f"The IAM {kind} .* does not exist"):
            directory(sessions, {"U1": arn}, allow_group_targets=True).principal_for("U1")


def test_unmanaged_principals_are_refused_when_the_tag_is_required(
    sessions: AwsSessions, iam: Any
) -> None:
    plain = make_principal(iam, "role", "plain")
    managed = make_principal(iam, "user", "managed", MANAGED)
    group = make_principal(iam, "group", "admins")
    strict = directory(
        sessions, {"U1": plain, "U2": managed, "U3": group}, require_managed_tag=True,
        allow_group_targets=True,
    )

    with pytest.raises(PrincipalError, match="not tagged connect-access:managed=true"):
        strict.principal_for("U1")
    assert strict.principal_for("U2") == managed
    with pytest.raises(PrincipalError, match="groups cannot carry"):
        strict.principal_for("U3")
    # Without the requirement the same role is fine.
    assert directory(sessions, {"U1": plain}).principal_for("U1") == plain


@pytest.mark.parametrize(
    "bad",
    [
        "alice",
        "arn:aws:s3:::bucket",
        "arn:aws:iam::123456789012:policy/x",
        "arn:aws:iam::123456789012:role",
        "arn:aws:sts::123456789012:assumed-role/x/y",
    ],
)
def test_malformed_arns_are_refused_with_an_example(sessions: AwsSessions, bad: str) -> None:
    with pytest.raises(PrincipalError, match=r"IAM|arn:aws:iam::123456789012:role/x"):
        directory(sessions, {"U1": bad}).principal_for("U1")


def test_arn_parsing_keeps_the_path() -> None:
    principal = parse_principal_arn("arn:aws:iam::123456789012:role/team/ops/alice")

    assert (principal.kind, principal.name, principal.path) == ("role", "alice", "/team/ops/")
    assert principal.name_param == "RoleName"
