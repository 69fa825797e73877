"""What deploy/bot-iam-policy.json lets the bot write, and where: only on principals with
the managed tag, never on its own role, only policies named as the bot names them (where
IAM can say so), never tags or boundaries; and the optional boundary condition documented
in docs/aws.md is one IAM evaluates for every write it would guard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bot.aws.granter import MANAGED_PATH
from bot.iamref import IamReference

ROOT = Path(__file__).parents[3]
POLICY = json.loads((ROOT / "deploy" / "bot-iam-policy.json").read_text())
# Actions that change what a role or user may do.
PRINCIPAL_WRITES = {"iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:AttachRolePolicy",
                    "iam:DetachRolePolicy", "iam:PutUserPolicy", "iam:DeleteUserPolicy",
                    "iam:AttachUserPolicy", "iam:DetachUserPolicy"}
BOTS_POLICIES = f"arn:aws:iam::ACCOUNT_ID:policy{MANAGED_PATH}connect-access-*"


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def statements(effect: str) -> list[dict[str, Any]]:
    return [s for s in POLICY["Statement"] if s["Effect"] == effect]


def test_every_write_to_a_role_or_user_needs_the_managed_tag() -> None:
    for statement in statements("Allow"):
        writes = set(as_list(statement["Action"])) & PRINCIPAL_WRITES
        if not writes:
            continue
        assert statement["Condition"]["StringEquals"] == {
            "iam:ResourceTag/connect-access:managed": "true"}, statement["Sid"]
        assert all(r.split(":")[5].startswith(("role/", "user/"))
                   for r in as_list(statement["Resource"]))


def test_attach_and_managed_policies_are_limited_to_the_bots_names() -> None:
    for statement in statements("Allow"):
        actions = set(as_list(statement["Action"]))
        if actions & {"iam:AttachRolePolicy", "iam:AttachUserPolicy", "iam:AttachGroupPolicy"}:
            assert statement["Condition"]["ArnLike"] == {"iam:PolicyARN": BOTS_POLICIES}
        if "iam:CreatePolicy" in actions:
            assert as_list(statement["Resource"]) == [BOTS_POLICIES]


def test_the_bots_own_role_is_never_written() -> None:
    (own,) = [s for s in statements("Deny") if s["Sid"] == "NeverChangeTheBotsOwnRole"]
    allowed_role_writes = {a for s in statements("Allow") for a in as_list(s["Action"])
                           if a in PRINCIPAL_WRITES and "Role" in a}
    assert allowed_role_writes <= set(as_list(own["Action"]))
    assert "arn:aws:iam::*:role/connect-access-bot" in own["Resource"]
    assert "arn:aws:iam::ACCOUNT_ID:role/BOT_ROLE_NAME" in own["Resource"]


def test_tags_and_boundaries_are_never_changed_by_the_bot() -> None:
    (guard,) = [s for s in statements("Deny") if s["Sid"] == "NeverChangeWhoIsManagedOrBounded"]
    for action in ("iam:TagRole", "iam:UntagRole", "iam:TagUser", "iam:UntagUser",
                   "iam:DeleteRolePermissionsBoundary", "iam:DeleteUserPermissionsBoundary"):
        assert action in guard["Action"]
    allowed = {a for s in statements("Allow") for a in as_list(s["Action"])}
    assert not allowed & set(guard["Action"])


@pytest.fixture(scope="module")
def ref() -> IamReference:
    return IamReference()


def test_the_documented_boundary_condition_guards_every_write(ref: IamReference) -> None:
    docs = (ROOT / "docs" / "aws.md").read_text()
    snippet = re.search(r"```json\n(\{\s*\"Condition\".*?)\n```", docs, re.S)
    assert snippet, "docs/aws.md shows the boundary condition to add"
    condition = json.loads(snippet.group(1))["Condition"]
    assert list(condition["ArnEquals"]) == ["iam:PermissionsBoundary"]
    for statement in statements("Allow"):
        writes = set(as_list(statement["Action"])) & PRINCIPAL_WRITES
        for action in writes:
            assert "iam:PermissionsBoundary" in ref.info(action).condition_keys, action
        if writes:
            # Reads share no statement with writes, so the condition can go on writes alone.
            assert set(as_list(statement["Action"])) <= PRINCIPAL_WRITES, statement["Sid"]
