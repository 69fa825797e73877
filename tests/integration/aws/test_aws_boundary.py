"""required_permissions_boundary: the bot refuses a principal without the boundary, so
whatever a grant (or a compromised bot) writes onto a principal stays within it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_testkit import OTHER_INSTANCE, TRUST, make_principal

from bot.aws.principals import IamPrincipalDirectory
from bot.aws.sessions import AwsSessions
from bot.config import ConfigError, parse_config
from bot.ports import PrincipalError

BOUNDARY_DOCUMENT = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "connect:*", "Resource": "*"}]})


def boundary(iam: Any, name: str = "connect-access-boundary") -> str:
    return str(iam.create_policy(PolicyName=name, PolicyDocument=BOUNDARY_DOCUMENT)
               ["Policy"]["Arn"])


def bounded_role(iam: Any, name: str, boundary_arn: str) -> str:
    return str(iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST,
                               PermissionsBoundary=boundary_arn)["Role"]["Arn"])


def directory(sessions: AwsSessions, mapping: dict[str, str], required: str,
              **options: Any) -> IamPrincipalDirectory:
    return IamPrincipalDirectory(sessions.iam_for_account, mapping, required_boundary=required,
                                 **options)


def test_a_principal_with_the_boundary_is_accepted(sessions: AwsSessions, iam: Any) -> None:
    # Roles only: moto 5.2 neither stores a user's boundary at CreateUser nor implements
    # PutUserPermissionsBoundary. The bot reads users' boundaries through GetUser the same
    # way (PermissionsBoundary.PermissionsBoundaryArn).
    required = boundary(iam)
    role = bounded_role(iam, "alice-admin", required)
    assert directory(sessions, {"U1": role}, required).principal_for("U1") == role


def test_a_principal_without_it_or_with_another_is_refused(sessions: AwsSessions,
                                                           iam: Any) -> None:
    required = boundary(iam)
    other = boundary(iam, "something-else")
    bare = make_principal(iam, "role", "bare")
    wrong = bounded_role(iam, "wrong", other)
    found = directory(sessions, {"U1": bare, "U2": wrong}, required)
    with pytest.raises(PrincipalError) as caught:
        found.principal_for("U1")
    assert str(caught.value) == (
        f"{bare} does not have the permissions boundary {required} (it has none), and this "
        "bot only grants to principals bounded by it. Ask an administrator to set it.")
    with pytest.raises(PrincipalError, match=f"\\(it has {other}\\)"):
        found.principal_for("U2")


def test_groups_are_refused_when_a_boundary_is_required(sessions: AwsSessions,
                                                        iam: Any) -> None:
    required = boundary(iam)
    group = make_principal(iam, "group", "admins")
    with pytest.raises(PrincipalError, match="groups cannot have a permissions boundary"):
        directory(sessions, {"U1": group}, required,
                  allow_group_targets=True).principal_for("U1")


def test_a_star_account_means_each_principals_own_account(sessions: AwsSessions,
                                                          iam: Any) -> None:
    home = bounded_role(iam, "home-admin", boundary(iam))
    other_iam = sessions.iam(OTHER_INSTANCE)
    remote = bounded_role(other_iam, "remote-admin", boundary(other_iam))
    found = directory(sessions, {"U1": home, "U2": remote},
                      "arn:aws:iam::*:policy/connect-access-boundary")
    assert found.principal_for("U1") == home
    assert found.principal_for("U2") == remote


def test_the_config_key_takes_a_policy_arn() -> None:
    arn = "arn:aws:iam::111122223333:policy/guard/connect-access-boundary"
    assert parse_config({"required_permissions_boundary": arn}
                        ).required_permissions_boundary == arn
    assert parse_config({}).required_permissions_boundary is None
    with pytest.raises(ConfigError, match=r"^x.yaml: required_permissions_boundary: must be a "
                                          r"managed policy ARN"):
        parse_config({"required_permissions_boundary": "connect-access-boundary"}, "x.yaml")
